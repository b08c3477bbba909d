"""Studies on the web: the page and its .json twin agree, notes are rendered safely, saving from the
editor and the API, refusals naming their field, reads that store nothing, and the notebook that
recomputes each run to the same id."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser

import pytest

from patchstudio.web.notes import render_notes
from test_reads import crawl
from web_helpers import HTMX, form, make_client


def make_runs(client, n: int = 3) -> list[str]:
    ids = []
    for overrides in ({}, {"component": "resid_pre", "positions": "each"}, {"method": "ablation"})[:n]:
        response = client.post("/explore", data=form(**overrides), headers=HTMX)
        ids.append(response.headers["HX-Push-Url"].rsplit("/", 1)[-1])
    return ids


def section(page: str, element_id: str) -> str:
    """The HTML of the element with this id (up to its closing tag at the same depth)."""
    start = page.index(f'id="{element_id}"')
    start = page.rindex("<", 0, start)
    tag = re.match(r"<(\w+)", page[start:]).group(1)
    depth, i = 0, start
    for m in re.finditer(rf"<(/?){tag}\b", page[start:]):
        depth += -1 if m.group(1) else 1
        if depth == 0:
            i = start + m.start()
            break
    return page[start:page.index(">", i) + 1]


def test_the_page_and_its_json_twin_agree(client):
    ids = make_runs(client)
    saved = client.post("/api/studies", json={"title": "Name movers & friends", "notes": "Three *views* of IOI.", "runs": ids})
    assert saved.status_code == 201 and saved.headers["location"] == f"/studies/{saved.json()['id']}.json"
    study_id = saved.json()["id"]
    data = client.get(f"/studies/{study_id}.json").json()
    assert data == saved.json()
    page = client.get(f"/studies/{study_id}")
    assert page.status_code == 200
    text = page.text
    assert f'<link rel="alternate" type="application/json" href="/studies/{study_id}.json">' in text
    assert html.escape(data["title"]) in section(text, "study-title")
    assert data["notes_html"].strip() in text and "<em>views</em>" in data["notes_html"]
    assert re.findall(r'class="study-run" id="run-\d+" data-run-id="([0-9a-f]{16})"', text) == ids == [r["id"] for r in data["runs"]]
    for run in data["runs"]:
        assert html.escape(run["claim"]) in text and run["links"]["page"] in text
        stored = client.get(run["links"]["json"]).json()
        assert run["clean"] == stored["clean"] and run["method"] == stored["spec"]["method"]
    assert [a for a in re.findall(r'data-figure="([^"]+)"', text)] == [f"study-plot-{i}-data" for i in (1, 2, 3)]
    assert data["links"]["notebook"] in text and data["links"]["edit"] in text


def test_saving_the_same_study_again_is_the_same_id_and_stores_nothing_new(client):
    ids = make_runs(client, 2)
    body = {"title": "t", "notes": "n", "runs": ids}
    first = client.post("/api/studies", json=body)
    store = client.app.state.service.store
    before = store.table_snapshot()
    again = client.post("/api/studies", json=body)
    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]
    assert store.table_snapshot() == before
    # the editor's form (CRLF notes, the runs as fields) makes the same study
    response = client.post("/studies", data={"title": "t ", "notes": "n\r\n", "runs": ids}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == f"/studies/{first.json()['id']}"


def test_an_edit_is_a_new_version_and_the_old_link_keeps_its_content(client):
    ids = make_runs(client)
    old = client.post("/api/studies", json={"title": "First", "notes": "old words", "runs": ids[:2]}).json()
    editor = client.get(old["links"]["edit"])
    assert editor.status_code == 200 and f'name="parent" value="{old["id"]}"' in editor.text
    assert re.findall(r'<input type="hidden" name="runs" value="([0-9a-f]{16})">', section(editor.text, "study-rows")) == ids[:2]
    response = client.post("/studies", data={"title": "Second", "notes": "new words", "runs": [ids[1]], "more": f"http://x/runs/{ids[2]}?_view=raw",
                                             "parent": old["id"]}, follow_redirects=False)
    assert response.status_code == 303
    new = client.get(response.headers["location"] + ".json").json()
    assert new["id"] != old["id"] and new["runs"][0]["id"] == ids[1] and new["runs"][1]["id"] == ids[2]
    assert new["parent"] == old["id"] and new["links"]["parent"] == f"/studies/{old['id']}"
    kept = client.get(f"/studies/{old['id']}.json").json()
    assert (kept["title"], kept["notes"], [r["id"] for r in kept["runs"]]) == ("First", "old words", ids[:2])
    assert [v["id"] for v in kept["versions"]] == [new["id"]]
    old_page = client.get(f"/studies/{old['id']}").text
    assert "old words" in old_page and "new words" not in section(old_page, "study-title")
    assert f'href="/studies/{new["id"]}"' in section(old_page, "newer-versions")
    assert f'href="/studies/{old["id"]}"' in section(client.get(f"/studies/{new['id']}").text, "parent-link")


ATTACKS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">raw html link</a>',
    "[md link](javascript:alert(1))",
    "[upper](JAVASCRIPT:alert(1))",
    "[tab](java&#09;script:alert(1))",
    "[encoded](%6Aavascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[vb](vbscript:msgbox(1))",
    "<javascript:alert(1)>",
    "![image](https://evil.example/track.png)",
    "<iframe src=https://evil.example></iframe>",
    '<div style="background:url(javascript:alert(1))">x</div>',
]
SAFE_TAGS = {"p", "em", "strong", "a", "code", "pre", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote",
             "table", "thead", "tbody", "tr", "th", "td", "s", "hr", "br"}


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(fragment: str) -> list[tuple[str, dict[str, str]]]:
    parser = Tags()
    parser.feed(fragment)
    return parser.tags


@pytest.mark.parametrize("attack", ATTACKS)
def test_notes_never_carry_script_html_or_unsafe_links(attack):
    rendered = str(render_notes(f"Before.\n\n{attack}\n\nAfter [a safe link](https://example.org/x) and **bold**."))
    found = tags(rendered)
    assert {t for t, _ in found} <= SAFE_TAGS, rendered
    for tag, attrs in found:
        assert set(attrs) <= ({"href", "rel"} if tag == "a" else set()), rendered  # no on*, style or src anywhere
    hrefs = [a["href"] for t, a in found if t == "a"]
    assert hrefs[-1] == "https://example.org/x" and all(h.startswith("https://") for h in hrefs), rendered  # an image: a link
    assert all(a["rel"] == "nofollow noopener noreferrer" for t, a in found if t == "a")


def test_notes_keep_markdown_and_show_html_as_text():
    rendered = str(render_notes("# Head\n\n| a | b |\n|---|---|\n| 1 | ~~2~~ |\n\n`<b>` and <b>bold?</b> [rel](/runs/0123456789abcdef)"))
    assert "<h1>Head</h1>" in rendered and "<td>1</td>" in rendered and "<s>2</s>" in rendered
    assert "<code>&lt;b&gt;</code>" in rendered and "&lt;b&gt;bold?&lt;/b&gt;" in rendered
    assert '<a href="/runs/0123456789abcdef" rel="nofollow noopener noreferrer">rel</a>' in rendered


def test_the_study_page_carries_no_attack_from_the_notes(client):
    ids = make_runs(client, 1)
    notes = "\n\n".join(ATTACKS)
    study = client.post("/api/studies", json={"title": "<script>alert('t')</script>", "notes": notes, "runs": ids}).json()
    page = client.get(f"/studies/{study['id']}").text
    notes_html = section(page, "study-notes")
    assert {t for t, _ in tags(notes_html)} <= SAFE_TAGS | {"div"}
    assert "javascript:" not in "".join(a.get("href", "") for _, a in tags(notes_html)).lower()
    assert "<script>alert('t')" not in page and "&lt;script&gt;alert(" in section(page, "study-title")
    assert study["notes"] == notes  # kept as written; only the rendering is sanitised


@pytest.mark.parametrize("body, field", [
    ({"notes": "n", "runs": ["RUN0"]}, "title"),
    ({"title": "x" * 201, "runs": ["RUN0"]}, "title"),
    ({"title": "t", "notes": "n" * 20_001, "runs": ["RUN0"]}, "notes"),
    ({"title": "a\x00b", "runs": ["RUN0"]}, "title"),  # PostgreSQL cannot store a NUL
    ({"title": "t", "notes": "\udc80", "runs": ["RUN0"]}, "notes"),  # nor hash a lone surrogate as UTF-8
    ({"title": "t", "runs": []}, "runs"),
    ({"title": "t", "runs": ["RUN0", "0" * 16]}, "runs.1"),
    ({"title": "t", "runs": ["RUN0", "not-an-id"]}, "runs.1"),
    ({"title": "t", "runs": ["RUN0", "RUN0"]}, "runs.1"),
    ({"title": "t", "runs": ["RUN0"], "parent": "f" * 16}, "parent"),
    ({"title": "t", "runs": ["RUN0"], "extra": 1}, "extra"),
    ("just a string", "body"),
])
def test_api_refusals_name_the_field_and_store_nothing(client, body, field):
    run_id = make_runs(client, 1)[0]
    if isinstance(body, dict):
        body = {k: ([run_id if r == "RUN0" else r for r in v] if k == "runs" else v) for k, v in body.items()}
    store = client.app.state.service.store
    before = store.table_snapshot()
    # json.dumps escapes the lone surrogate (httpx's json= would fail to encode it)
    response = client.post("/api/studies", content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert field in response.json()["detail"]
    assert store.table_snapshot() == before


def test_the_editor_shows_a_refusal_beside_the_runs_and_keeps_what_was_typed(client):
    ids = make_runs(client, 1)
    response = client.post("/studies", data={"title": "Kept title", "notes": "kept notes", "runs": ids, "more": "0000000000000000"})
    assert response.status_code == 422
    assert "runs.1: no stored run with id 0000000000000000" in section(response.text, "runs-error")
    assert 'value="Kept title"' in response.text and ">kept notes</textarea>" in response.text
    assert 'value="0000000000000000"' in section(response.text, "more")  # left in the field it was typed in
    assert re.findall(r'name="runs" value="([0-9a-f]{16})"', section(response.text, "study-rows")) == ids


@pytest.mark.parametrize("url, status, kind", [
    ("/studies/0000000000000000", 404, "text/html"),
    ("/studies/not-an-id", 404, "text/html"),
    ("/studies/0000000000000000.json", 404, "application/json"),
    ("/studies/0000000000000000.ipynb", 404, "application/json"),
    ("/studies/0000000000000000/edit", 404, "text/html"),
])
def test_unknown_studies_are_404(client, url, status, kind):
    response = client.get(url)
    assert response.status_code == status and response.headers["content-type"].startswith(kind)
    assert "no study with id" in response.text


def test_reading_studies_and_following_every_link_stores_nothing(client):
    ids = make_runs(client)
    first = client.post("/api/studies", json={"title": "One", "notes": "see [run](/runs/%s)" % ids[0], "runs": ids}).json()
    client.post("/api/studies", json={"title": "Two", "runs": ids[::-1], "parent": first["id"]})
    store = client.app.state.service.store
    before = store.table_snapshot()
    visited = crawl(client, ["/studies", f"/studies/new?runs={ids[0]}&runs=0000000000000000"])
    assert any(v.endswith(".ipynb") for v in visited) and any(v.endswith("/edit") for v in visited)
    assert f"/studies/{first['id']}.json" in visited and "/studies.json" in visited
    assert store.table_snapshot() == before


def test_a_run_page_offers_add_to_study(client):
    run_id = make_runs(client, 1)[0]
    page = client.get(f"/runs/{run_id}").text
    assert f'href="/studies/new?runs={run_id}"' in page
    editor = client.get(f"/studies/new?runs={run_id}").text
    assert re.findall(r'name="runs" value="([0-9a-f]{16})"', section(editor, "study-rows")) == [run_id]
    assert 'name="parent" value=""' in editor


# --- the notebook ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped_client(tmp_path_factory):
    """The app on the shipped default model, the one the notebook's kernel loads by name."""
    import patchstudio

    with make_client(tmp_path_factory.mktemp("nb"), patchstudio.load_model("default")) as c:
        yield c


def test_the_notebook_recomputes_every_run_to_the_same_id(shipped_client):
    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
    ids = make_runs(shipped_client)
    study = shipped_client.post("/api/studies", json={"title": "Three runs", "notes": "Why **these** three.", "runs": ids}).json()
    response = shipped_client.get(study["links"]["notebook"])
    assert response.headers["content-type"] == "application/x-ipynb+json"
    assert f'filename="patchstudio-study-{study["id"]}.ipynb"' in response.headers["content-disposition"]
    nb = nbformat.reads(response.text, as_version=4)
    nbformat.validate(nb)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds == ["markdown", "markdown", "code"] + ["markdown", "code"] * 3
    assert nb.cells[0].source.startswith("# Three runs\n\nWhy **these** three.")
    for i, run in enumerate(study["runs"]):
        claim, code = nb.cells[3 + 2 * i], nb.cells[4 + 2 * i]
        assert claim.source.startswith(f"## {i + 1}. {run['claim']}")
        assert f"assert result.id == {run['id']!r}" in code.source and "patchstudio.run(spec, model=model)" in code.source
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()  # raises on any failing cell
    printed = ["".join(o["text"] for o in nb.cells[4 + 2 * i].outputs if o.get("name") == "stdout") for i in range(3)]
    # show() prints the recomputed result's own id first: the kernel got the study's ids
    assert [p.split(":", 1)[0].strip() for p in printed] == ids
    heads = printed[0].splitlines()
    assert heads[2].split()[0] == "L0" and heads[1].split()[:2] == ["H0", "H1"]
    # each run's cell draws its figure: an SVG heatmap with one cell per value of the run's default
    # view, its tooltip the value (read here from the .json twin), titled with the id and the view
    for i, run_id in enumerate(ids):
        drawn = [o for o in nb.cells[4 + 2 * i].outputs if o.get("output_type") == "display_data"]
        assert len(drawn) == 1 and "image/svg+xml" in drawn[0]["data"], nb.cells[4 + 2 * i].outputs
        svg = drawn[0]["data"]["image/svg+xml"]
        twin = shipped_client.get(f"/runs/{run_id}.json").json()
        view = twin["views"][twin["views"]["default"]]

        def flat(v):
            return [x for w in v for x in flat(w)] if isinstance(v, list) else [v]

        values = flat(view["values"])
        tips = [float(t) for t in re.findall(r"<title>[^<]*: ([-+][0-9.]+)</title></rect>", svg)]
        assert tips == pytest.approx(values, abs=1e-4) and svg.count("<rect ") == len(values)
        assert html.unescape(re.search(r'font-size="12">([^<]*)</text>', svg).group(1)) == f"{run_id}: {view['title']}"


def test_a_run_on_a_model_patchstudio_does_not_ship_says_what_to_load(client):
    from patchstudio.web.study_notebook import builtin

    assert builtin("default") and builtin("tracr-reverse") and not builtin("gpt2")
    run_id = make_runs(client, 1)[0]
    stored = client.app.state.service.store.get(run_id)
    # the same run, as if computed on a Hugging Face model: the notebook asks the reader to load it
    spec = stored.result.spec.model_copy(update={"model": "gpt2"})
    other = stored.model_copy(update={"result": stored.result.model_copy(update={"spec": spec})})
    from patchstudio.web.study_notebook import notebook

    study = client.post("/api/studies", json={"title": "t", "runs": [run_id]}).json()
    from patchstudio import studies

    cells = notebook(studies.get(client.app.state.service.store, study["id"]), [other], "http://server")["cells"]
    assert "**Load the model first.** `gpt2` is not one of the models patchstudio ships" in cells[3]["source"]
    assert "model = patchstudio.load_model('gpt2')" in cells[4]["source"]
    assert "Load the model first" not in json.dumps(notebook(studies.get(client.app.state.service.store, study["id"]), [stored], "")["cells"])
