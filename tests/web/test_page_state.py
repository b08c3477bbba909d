"""The explore page's own readings (issue 20, point 7), each from a hand formula: the share link
carries the view, scale and selected cell; the PNG's words carry the whole claim and the run id;
the floor notice and the marks' legend; an over-long prompt keeps the last result; switching model
switches the word list; "your runs" by this browser's key; a job's box shows its time left."""

from __future__ import annotations

import datetime as dt
import html
import json
import re

import pytest

from helpers import TINY_PAIRS, build_tiny_model, build_word_tokenizer
from patchstudio import analysis
from patchstudio.engine.run import run
from web_helpers import HTMX, form, make_client

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


def share_link(page: str) -> str:
    return html.unescape(re.search(r'<input type="text" readonly id="share-link" value="([^"]+)"', page).group(1))


def strongest(result) -> tuple[int, int]:
    """The (layer, head) whose value is furthest from the corrupted run (denoising's no effect)."""
    cells = [(abs(v - result.corrupted), layer, head) for layer, row in enumerate(result.values) for head, v in enumerate(row)]
    _, layer, head = max(cells, key=lambda c: c[0])
    return layer, head


def test_the_share_link_carries_the_view_scale_and_selected_cell(client, tiny_model):
    run_id = client.post("/api/runs", json=HEADS).json()["id"]
    page = client.get(f"/runs/{run_id}?_view=change&_scale=data&_layer=1&_head=2").text
    assert share_link(page) == f"http://testserver/runs/{run_id}?_view=change&_scale=data&_layer=1&_head=2"
    # a bare link: the view, the scale and the cell it shows, named
    layer, head = strongest(run(tiny_model, HEADS))
    assert share_link(client.get(f"/runs/{run_id}").text) == (
        f"http://testserver/runs/{run_id}?_view=share&_scale=gap&_layer={layer}&_head={head}")
    # the view and scale links keep the selected cell (another view opens on its own default scale)
    assert f'href="/runs/{run_id}?_view=raw&amp;_layer=1&amp;_head=2"' in page
    assert f'href="/runs/{run_id}?_view=change&amp;_scale=gap&amp;_layer=1&amp;_head=2"' in page
    # the change view's default: its data range
    assert share_link(client.get(f"/runs/{run_id}?_view=change&_layer=1&_head=2").text).endswith("?_view=change&_scale=data&_layer=1&_head=2")


def test_a_per_position_link_keeps_its_position(client):
    run_id = client.post("/api/runs", json={**HEADS, "positions": "each"}).json()["id"]
    page = client.get(f"/runs/{run_id}?_pos=10&_layer=1&_head=3").text
    assert share_link(page) == f"http://testserver/runs/{run_id}?_view=share&_scale=gap&_layer=1&_head=3&_pos=10"


def test_an_unknown_scale_is_refused_naming_the_parameter(client):
    run_id = client.post("/api/runs", json=HEADS).json()["id"]
    response = client.get(f"/runs/{run_id}.json")
    assert response.status_code == 200
    refused = client.get(f"/runs/{run_id}?_scale=log", headers={"accept": "application/json"})
    assert refused.status_code == 422 and "_scale must be one of gap, data" in refused.text


def png_words(page: str) -> dict:
    raw = re.search(r"data-caption='([^']*)'", page).group(1)
    return json.loads(html.unescape(raw))


def test_the_png_carries_the_whole_claim_and_the_run_id(client, tiny_model):
    spec = {**HEADS, "method": "ablation", "ablation": "mean"}
    run_id = client.post("/api/runs", json=spec).json()["id"]
    result = run(tiny_model, spec)
    words = png_words(client.get(f"/runs/{run_id}").text)
    claim = words["claim"]
    for part in ("mean ablation", "attention head output", "metric: logit(answer) − logit(wrong)",
                 "corruption: 2 pairs, prompt 1 differs at 10: John→Mary"):
        assert part in claim, part
    lines = words["lines"]
    assert lines[0] == f"Evidence: {analysis.read(result).evidence}."
    assert lines[1] == f"Ablation reference: {result.reference['description']}."
    assert lines[2].startswith("2 prompt pairs, each cell their mean.")
    assert words["run"] == f"Run {run_id} on default" and words["link"] == share_link(client.get(f"/runs/{run_id}").text)
    # activation patching uses no reference: no such line
    plain = png_words(client.get(f"/runs/{client.post('/api/runs', json=HEADS).json()['id']}").text)
    assert not any(line.startswith("Ablation reference") for line in plain["lines"])


def test_a_result_under_the_floor_says_so_above_the_plot(client, tiny_model):
    result = run(tiny_model, {**HEADS, "metric": "logit_diff", "prompts": TINY_PAIRS[::-1]})
    gap = result.clean - result.corrupted
    tiny = [[result.corrupted + 0.002 * gap * (1 if (l + h) % 2 else -1) for h in range(len(row))]
            for l, row in enumerate(result.values)]
    quiet = result.model_copy(update={"values": tiny, "ci_low": [[v - abs(gap) for v in row] for row in tiny],
                                      "ci_high": [[v + abs(gap) for v in row] for row in tiny]})
    stored = client.app.state.service.store.put(quiet, "fingerprint")
    page = client.get(f"/runs/{stored.id}").text
    notice = html.unescape(re.search(r'<p class="warning floor-notice" id="floor-notice" role="note">(.*?)</p>', page, re.S).group(1))
    assert notice.startswith(f"Under the floor: the largest effect here is {0.002 * abs(gap):.2g} logit diff, 0.2% of the "
                             f"{abs(gap):.3g} logit diff gap")
    legend = html.unescape(re.search(r'<p class="legend" id="mark-legend">.*?</span> (.*?)</p>', page, re.S).group(1))
    n = len(tiny) * len(tiny[0])
    assert legend.startswith(f"Faded, struck cells ({n} of {n}): the 95% interval of their mean over 2 prompts covers no effect")
    # a result over the floor says nothing of the kind
    assert 'id="floor-notice"' not in client.get(f"/runs/{client.post('/api/runs', json=HEADS).json()['id']}").text


def test_an_over_long_prompt_keeps_the_last_result(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, max_prompt_chars=200) as client:
        response = client.post("/explore", data=form(clean="Mary " * 100), headers=HTMX)
        assert response.status_code == 200 and response.headers.get("HX-Reswap") == "none"  # nothing replaces the result
        assert 'id="results"' not in response.text and "Edit the experiment; results appear here" not in response.text
        error = re.search(r'<div class="field-error" id="err-clean" hx-swap-oob="true" role="alert">(.*?)</div>', response.text)
        assert error is not None and "characters long; the limit is 200" in error.group(1)


def test_switching_model_switches_the_word_list(tmp_path, tiny_model):
    other = build_tiny_model(build_word_tokenizer(tmp_path / "other-tok", words=["Kevin", "Frank", "sat", "by", "the", "sea"]))
    models = {"default": tiny_model, "other": other}
    from patchstudio.settings import Settings
    from patchstudio.web.app import create_app
    from fastapi.testclient import TestClient

    settings = Settings(models=["default", "other"], database_url=f"sqlite:///{tmp_path}/runs.sqlite3", allowed_hosts=["testserver"])
    with TestClient(create_app(settings, model_loader=models.__getitem__)) as client:
        assert "Words this model knows (27)" in client.get("/").text  # the default's 27 words
        response = client.post("/explore", data=form(model="other"), headers=HTMX)  # refused: its words differ
        box = re.search(r'<div id="vocabulary-box" hx-swap-oob="true" data-model="other">(.*?)</div>', response.text, re.S).group(1)
        assert "Words this model knows (6)" in box and "Kevin" in box and "Mary" not in box
        assert re.findall(r'<option value="(\w+)">', box) == ["Kevin", "Frank"]  # the answers' autocomplete: its names


def test_your_runs_are_this_browsers_own(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model) as mine, make_client(tmp_path, tiny_model) as theirs:
        mine.get("/"), theirs.get("/")  # each browser's cookie: its key
        asked = mine.post("/explore", data=form(), headers=HTMX)
        run_id = asked.headers["HX-Push-Url"].rsplit("/", 1)[1]
        assert re.findall(r'<li class="your-run" data-run-id="(\w+)"', asked.text) == [run_id]  # updated in place
        other_id = theirs.post("/explore", data=form(direction="noise"), headers=HTMX).headers["HX-Push-Url"].rsplit("/", 1)[1]
        page = mine.get("/").text
        assert re.findall(r'<li class="your-run" data-run-id="(\w+)"', page) == [run_id]
        assert sorted(re.findall(r'<li class="recent-run" data-run-id="(\w+)"', page)) == sorted([run_id, other_id])  # everyone's
        assert re.findall(r'<li class="your-run" data-run-id="(\w+)"', theirs.get("/").text) == [other_id]
        assert "c:" not in page.split('id="your-runs-box"')[1].split("</section>")[0]  # no key is shown


def test_a_job_box_shows_its_time_left_from_the_first_second(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=0, local_workers=0) as client:
        client.get("/")
        store = client.app.state.service.jobs.store
        first = re.search(r'data-job-id="(\w+)"', client.post("/explore", data=form(), headers=HTMX).text).group(1)
        assert "not measured yet: no job of this kind has finished on this model" in client.get(f"/jobs/{first}", headers=HTMX).text
        attempt = store.claim(first, "w")
        store.finish(first, attempt, "done")
        from patchstudio.jobs.store import jobs

        with store.engine.begin() as conn:  # 8 patched runs in 4 s: 2 a second
            t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
            conn.execute(jobs.update().where(jobs.c.id == first).values(started_at=t0, finished_at=t0 + dt.timedelta(seconds=4)))
        queued = client.post("/explore", data=form(metric="prob"), headers=HTMX).text  # the same kind, 8 runs
        box = re.search(r'<p class="job-eta" id="job-eta">(.*?)</p>', queued, re.S).group(1)
        assert "<strong>about 4 s</strong>" in box and "model&#39;s recent jobs" in box
