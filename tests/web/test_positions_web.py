"""Positions by role on the web: the form's chosen positions, the CSV's and the JSON's role and n per
cell, and refusals beside the field they come from."""

from __future__ import annotations

import csv
import html
import io
import json
import re

import pytest

from patchstudio.engine.run import run
from web_helpers import HTMX, IOI, IOI_CORRUPTED, form

# both name orders: IO is token 2 in the first pair, token 4 in the second
MIXED = [
    {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"},
    {"clean": "When John and Mary went to the store , John gave a drink to",
     "corrupted": "When John and Mary went to the store , Mary gave a drink to", "answer": "Mary", "wrong": "John"},
    {"clean": "When Tom and Anna went to the garden , Tom gave a book to",
     "corrupted": "When Tom and Anna went to the garden , Anna gave a book to", "answer": "Anna", "wrong": "Tom"},
]
PAIRS_TEXT = "\n".join(f"{p['clean']} | {p['corrupted']} | {p['answer']} | {p['wrong']}" for p in MIXED)


def error_in(text: str, name: str) -> str:
    found = re.search(rf'<div class="field-error" id="err-{name}"[^>]*>(.*?)</div>', text, re.S)
    assert found is not None, f"no error slot for {name}"
    return html.unescape(found.group(1))


@pytest.mark.parametrize("typed", ["S2 and END", "END, S2", "S2;END  S2"])
@pytest.mark.parametrize("method", ["activation_patching", "ablation", "attribution_patching"])
def test_chosen_positions_from_the_form(client, tiny_model, typed, method):
    response = client.post("/explore", data=form(method=method, source="family", family="custom", pairs_text=PAIRS_TEXT,
                                                 component="head", positions="chosen", positions_at=typed,
                                                 ablation="zero"), headers=HTMX)
    spec = {"method": method, "prompts": MIXED, "component": "head", "positions": ["S2", "END"]}
    if method == "ablation":
        spec["ablation"] = "zero"
    expected = run(tiny_model, spec)
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    stored = client.get(f"/runs/{expected.id}.json").json()
    assert stored["labels"]["pos"] == ["S2", "END"] and stored["spec"]["positions"] == ["END", "S2"]
    page = client.get(f"/runs/{expected.id}").text  # the stored spec shows back in the form
    assert '<option value="chosen" selected>' in page and 'name="positions_at" value="END, S2"' in page


def test_chosen_positions_left_empty_are_refused_beside_the_field(client):
    response = client.post("/explore", data=form(positions="chosen", positions_at=" and "), headers=HTMX)
    assert "type the positions to patch" in error_in(response.text, "positions_at")


def test_a_role_some_prompt_lacks_is_refused_beside_the_box_it_was_typed_in(client):
    response = client.post("/explore", data=form(positions="chosen", positions_at="S3"), headers=HTMX)
    assert "prompt 1 has no position 'S3': its roles are BOS, When, IO, and, S1" in error_in(response.text, "positions_at")


def test_json_and_csv_name_the_role_and_how_many_prompts_each_cell_averages(client):
    body = client.post("/api/runs", json={"prompts": MIXED, "component": "resid_pre", "positions": "each"}).json()
    roles = {r["role"]: r for r in body["roles"]}
    assert body["labels"]["pos"] == [r["role"] for r in body["roles"]]
    assert roles["IO"]["at"] == [[2], [4], [4]] and roles["S1"]["at"] == [[4], [2], [2]]
    assert {r["n"] for r in body["roles"]} == {3}
    rows = list(csv.DictReader(io.StringIO(client.get(f"/runs/{body['id']}.csv").text)))
    assert list(rows[0])[:6] == ["layer", "pos", "token", "role", "n", "value"]
    n_pos = len(body["labels"]["pos"])
    by_role = {row["role"]: row for row in rows[n_pos:]}  # layer 1
    assert set(by_role) == set(body["labels"]["pos"]) and {row["n"] for row in rows} == {"3"}
    assert by_role["IO"]["token"] == "" and by_role["END"]["token"] == "to"  # the names differ; 'to' ends every prompt
    io_pos = body["labels"]["pos"].index("IO")
    assert float(by_role["IO"]["value"]) == pytest.approx(body["values"][1][io_pos])
    assert [float(by_role["IO"][f"prompt_{i}"]) for i in (1, 2, 3)] == pytest.approx([p[1][io_pos] for p in body["per_prompt"]])


def test_the_page_names_roles_on_the_axis(client):
    response = client.post("/explore", data=form(source="family", family="custom", pairs_text=PAIRS_TEXT,
                                                 component="resid_pre", positions="each"), headers=HTMX)
    # the figure's JSON escapes '&' of the escaped '<bos>'
    assert '"x": ["BOS (\\u0026lt;bos\\u0026gt;)", "When", "IO", "and", "S1"' in response.text
    assert "position (role; n = 3 prompts per cell)" in response.text


INDUCTION = {"clean": "Mary John Alice Bob Mary John Alice", "corrupted": "Tom Anna Alice Bob Mary John Alice",
             "answer": "Bob", "wrong": "Tom"}


@pytest.mark.parametrize(
    "positions, words",
    [("each", "prompt 2 is a repeated sequence while prompt 1 is an IOI prompt"), (["S2"], "prompt 2 has no position 'S2'")],
)
def test_roles_that_cannot_be_aligned_are_a_422_naming_positions(client, positions, words):
    """An IOI pair and a repeated sequence share no role but END: refused, never averaged by index."""
    response = client.post("/api/runs", json={"prompts": [MIXED[0], INDUCTION], "component": "resid_pre",
                                              "positions": positions})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "positions" and words in body["detail"]


def test_the_position_picker_of_a_head_sweep_names_roles(client):
    body = client.post("/api/runs", json={"prompts": MIXED, "component": "head", "positions": ["S2", "END", "IO"]}).json()
    page = client.get(f"/runs/{body['id']}").text
    links = re.findall(r'<a class="pos[^"]*"[^>]*>([^<]*)</a>', page)
    assert links == ["IO", "S2", "END"] == body["labels"]["pos"]


# one template, a slot whose word differs ('ring', 'book'): aligned by index 5 (tests/engine/test_roles.py)
SLOT_PAIRS = [{"clean": "the store had a ring to", "corrupted": "the school had a ring to", "answer": "to", "wrong": "at"},
              {"clean": "the garden had a book to", "corrupted": "the store had a book to", "answer": "to", "wrong": "at"}]


def test_cells_by_index_are_named_pos_i_with_their_tokens_never_a_bare_number(client):
    """A template slot and a picked index are stored with the bare index as their role; the axis,
    hover, CSV and the head sweep's position picker read 'pos 5 (ring, book)' and 'pos 4 (a)'."""
    body = client.post("/api/runs", json={"prompts": SLOT_PAIRS, "component": "resid_pre", "positions": "each"}).json()
    assert body["labels"]["pos"][5] == "5"  # stored as it was: the index
    heatmap = json.loads(re.search(r'<script type="application/json" id="heatmap-data">(.*?)</script>',
                                   client.get(f"/runs/{body['id']}").text, re.S).group(1))
    assert heatmap["data"][0]["x"][5] == "pos 5 (ring, book)" and "5" not in heatmap["data"][0]["x"]
    assert heatmap["data"][0]["text"][0][5].startswith("L0 pos 5 (ring, book): ")
    rows = list(csv.DictReader(io.StringIO(client.get(f"/runs/{body['id']}.csv").text)))
    assert [row["role"] for row in rows if row["pos"] == "5"] == ["pos 5"] * len(body["values"])
    assert [row["token"] for row in rows if row["pos"] == "5"][0] == ""  # the word differs between the prompts
    picked = client.post("/api/runs", json={"prompts": SLOT_PAIRS, "component": "head", "positions": [4, 5, "END"]}).json()
    page = client.get(f"/runs/{picked['id']}").text
    assert re.findall(r'<a class="pos[^"]*"[^>]*>([^<]*)</a>', page) == ["pos 4 (a)", "pos 5 (ring, book)", "END"]
    rows = list(csv.DictReader(io.StringIO(client.get(f"/runs/{picked['id']}.csv").text)))
    assert {row["role"] for row in rows} == {"pos 4", "pos 5", "END"}
