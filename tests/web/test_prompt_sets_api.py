"""The prompt-set API: an upload is checked row by row and stored once (201 with its id, size and
tokens), a bad one is refused with every bad row and stores nothing, GET reads without writing, and
a spec that names a set computes what the same pairs pasted compute."""

from __future__ import annotations

import csv
import io
import json

from helpers import TINY_PAIRS

FIELDS = ("clean", "corrupted", "answer", "wrong")


def csv_text(pairs) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows([[p[k] for k in FIELDS] for p in pairs])
    return out.getvalue()


def store_of(client):
    return client.app.state.service.store


def test_a_csv_upload_is_stored_and_read_back(client):
    answer = client.post("/api/prompt-sets", files={"file": ("pairs.csv", csv_text(TINY_PAIRS).encode(), "text/csv")})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["n_pairs"] == len(TINY_PAIRS) and body["created"] is True
    first = body["rows"][0]
    assert {k: first[k] for k in FIELDS} == TINY_PAIRS[0]
    assert first["tokens"]["clean"] == ["<bos>", *TINY_PAIRS[0]["clean"].split()]
    assert first["tokens"]["answer"] == [TINY_PAIRS[0]["answer"]]
    again = client.post("/api/prompt-sets", files={"file": ("again.csv", csv_text(TINY_PAIRS).encode(), "text/csv")})
    assert again.status_code == 201 and again.json()["id"] == body["id"] and again.json()["created"] is False
    for url in (f"/api/prompt-sets/{body['id']}", body["links"]["json"]):
        read = client.get(url)
        assert read.status_code == 200
        assert [{k: r[k] for k in FIELDS} for r in read.json()["rows"]] == TINY_PAIRS


def test_a_json_body_of_pairs_gives_the_same_id_as_the_file(client):
    by_file = client.post("/api/prompt-sets", files={"file": ("p.csv", csv_text(TINY_PAIRS).encode(), "text/csv")}).json()
    by_json = client.post("/api/prompt-sets", json={"pairs": TINY_PAIRS})
    jsonl = client.post("/api/prompt-sets", json={"text": "\n".join(json.dumps(p) for p in TINY_PAIRS), "format": "jsonl"})
    assert by_json.status_code == jsonl.status_code == 201
    assert by_json.json()["id"] == jsonl.json()["id"] == by_file["id"]


def test_a_set_with_a_bad_row_is_refused_with_every_bad_row_and_nothing_is_stored(client):
    bad = dict(TINY_PAIRS[1], wrong=TINY_PAIRS[1]["answer"])
    longer = dict(TINY_PAIRS[0], corrupted=TINY_PAIRS[0]["corrupted"] + " Mary")
    before = store_of(client).table_snapshot()
    answer = client.post("/api/prompt-sets", files={"file": ("p.csv", csv_text([TINY_PAIRS[0], bad, TINY_PAIRS[0]]).encode(), "text/csv")})
    assert answer.status_code == 422
    assert [(r["line"], r["reason"][:23]) for r in answer.json()["info"]["rows"]] == [
        (3, "wrong is the answer its"), (4, "the same pair as line 2")]
    on_model = client.post("/api/prompt-sets", json={"pairs": [TINY_PAIRS[0], longer]})
    assert on_model.status_code == 422
    rows = on_model.json()["info"]["rows"]
    assert [r["line"] for r in rows] == [2] and "same number of tokens" in rows[0]["reason"]
    assert store_of(client).table_snapshot() == before


def test_gets_never_write_and_unknown_ids_are_404(client):
    before = store_of(client).table_snapshot()
    assert client.get("/api/prompt-sets/0123456789abcdef").status_code == 404
    assert client.get("/api/prompt-sets/not-an-id.json").status_code == 404
    assert store_of(client).table_snapshot() == before


def test_bad_bodies_name_the_field(client):
    assert client.post("/api/prompt-sets", json={"text": 3}).json()["field"] == "body"
    assert client.post("/api/prompt-sets", files={"other": ("p.csv", b"x", "text/csv")}).json()["field"] == "file"


def test_a_spec_naming_a_set_computes_what_the_same_pairs_pasted_compute(client):
    set_id = client.post("/api/prompt-sets", json={"pairs": TINY_PAIRS}).json()["id"]
    by_set = client.post("/api/runs", json={"prompt_set": set_id, "component": "head"})
    pasted = client.post("/api/runs", json={"prompts": TINY_PAIRS, "component": "head"})
    assert by_set.status_code == pasted.status_code == 200, by_set.text
    a, b = by_set.json(), pasted.json()
    assert a["id"] != b["id"] and a["spec"]["prompt_set"] == set_id and "prompt_set" not in b["spec"]
    assert a["spec"]["prompts"] == b["spec"]["prompts"]
    assert a["values"] == b["values"] and a["clean"] == b["clean"] and a["corrupted"] == b["corrupted"]
    # the id with its pairs written out is the same experiment
    both = client.post("/api/runs", json={"prompt_set": set_id, "prompts": TINY_PAIRS, "component": "head"})
    assert both.status_code == 200 and both.json()["id"] == a["id"]


def test_a_spec_naming_an_unknown_set_or_other_prompts_is_refused(client):
    unknown = client.post("/api/runs", json={"prompt_set": "0123456789abcdef"})
    assert unknown.status_code == 422 and unknown.json()["field"] == "prompt_set"
    set_id = client.post("/api/prompt-sets", json={"pairs": TINY_PAIRS}).json()["id"]
    other = client.post("/api/runs", json={"prompt_set": set_id, "prompts": TINY_PAIRS[:1]})
    assert other.status_code == 422 and other.json()["field"] == "prompts"
    assert client.post("/api/runs", json={"prompt_set": "nope", "prompts": TINY_PAIRS}).json()["field"] == "prompt_set"


def test_the_page_upload_fills_in_the_pairs_and_the_form_runs_the_set(client):
    page = client.get("/")
    assert page.status_code == 200 and 'name="prompt_set_file"' in page.text
    answer = client.post("/prompt-sets/upload", files={"prompt_set_file": ("p.csv", csv_text(TINY_PAIRS).encode(), "text/csv")},
                         headers={"HX-Request": "true"})
    assert answer.status_code == 201, answer.text
    set_id = client.post("/api/prompt-sets", json={"pairs": TINY_PAIRS}).json()["id"]
    assert f'name="prompt_set" value="{set_id}"' in answer.text
    assert f"{len(TINY_PAIRS)} pairs" in answer.text
    assert 'id="family-field" hx-swap-oob="true"' in answer.text and '<option value="custom" selected' in answer.text
    first = " | ".join(TINY_PAIRS[0][k] for k in FIELDS)
    assert first in answer.text and 'id="pairs_text"' in answer.text


def test_the_page_upload_lists_the_bad_rows_and_stores_nothing(client):
    before = store_of(client).table_snapshot()
    bad = dict(TINY_PAIRS[1], wrong="")
    answer = client.post("/prompt-sets/upload", files={"prompt_set_file": ("p.csv", csv_text([TINY_PAIRS[0], bad]).encode(), "text/csv")},
                         headers={"HX-Request": "true"})
    assert answer.status_code == 422
    assert "1 bad row, nothing stored" in answer.text and "<li>line 3 (wrong): wrong is empty</li>" in answer.text
    assert store_of(client).table_snapshot() == before


def test_the_form_with_an_uploaded_set_runs_the_spec_that_names_it_and_edited_pairs_are_refused(client):
    from web_helpers import HTMX, form

    set_id = client.post("/api/prompt-sets", json={"pairs": TINY_PAIRS}).json()["id"]
    by_api = client.post("/api/runs", json={"prompt_set": set_id, "component": "head"}).json()["id"]
    text = "\n".join(" | ".join(p[k] for k in FIELDS) for p in TINY_PAIRS)
    ran = client.post("/explore", data=form(source="family", family="custom", pairs_text=text, prompt_set=set_id), headers=HTMX)
    assert ran.status_code == 200 and ran.headers["HX-Push-Url"].startswith(f"/runs/{by_api}")
    edited = client.post("/explore", data=form(source="family", family="custom", pairs_text=text.split("\n")[0], prompt_set=set_id),
                         headers=HTMX)
    assert f"not those of prompt set {set_id}" in edited.text
    reopened = client.get(f"/runs/{by_api}")
    assert f'name="prompt_set" value="{set_id}"' in reopened.text


def test_a_sets_role_columns_reach_the_run_by_api_and_by_the_form(client):
    """Issue 23: the set's roles go with its pairs into the spec, the same from the API and from the
    form (whose pairs text has no roles), and a sweep has the role's cell."""
    from web_helpers import HTMX, form

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[*FIELDS, "X"], *([p[k] for k in FIELDS] + [w] for p, w in
                                                                          zip(TINY_PAIRS, ("drink", "book")))])
    text = out.getvalue()
    made = client.post("/api/prompt-sets", files={"file": ("pairs.csv", text.encode(), "text/csv")})
    assert made.status_code == 201, made.text
    assert [row["roles"] for row in made.json()["rows"]] == [{"X": "drink"}, {"X": "book"}]
    set_id = made.json()["id"]
    by_api = client.post("/api/runs", json={"prompt_set": set_id, "component": "resid_pre", "positions": ["X"]})
    assert by_api.status_code == 200, by_api.text
    stored = by_api.json()
    run_id = stored["id"]
    assert [p["roles"] for p in stored["spec"]["prompts"]] == [{"X": "drink"}, {"X": "book"}]
    assert stored["labels"]["pos"] == ["X"]
    assert [r["at"] for r in stored["roles"]] == [[[13], [13]]]  # 'drink', 'book': the 13th word, after BOS
    pairs_text = "\n".join(" | ".join(p[k] for k in FIELDS) for p in TINY_PAIRS)
    ran = client.post("/explore", data=form(source="family", family="custom", pairs_text=pairs_text, prompt_set=set_id,
                                            component="resid_pre", positions="chosen", positions_at="X"), headers=HTMX)
    assert ran.status_code == 200 and ran.headers["HX-Push-Url"].startswith(f"/runs/{run_id}")
