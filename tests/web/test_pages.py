"""HTML pages and htmx fragments: status, content type, and the text a user reads."""

from __future__ import annotations

import json
import re
import time

import pytest

from patchstudio import analysis
from patchstudio.engine.run import run
from web_helpers import HTMX, IOI, IOI_CORRUPTED, form, make_client


def test_home_page_shows_the_form_and_stores_nothing_until_run(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    text = response.text
    assert 'id="spec-form"' in text and "Clean prompt" in text
    assert 'id="heatmap"' not in text and "results appear here" in text  # a GET never computes
    assert "/static/vendor/htmx-2.0.11.min.js" in text and "/static/vendor/plotly-3.7.0.min.js" in text
    assert "cdn" not in text.lower()
    assert client.get("/api/runs").json() == []
    client.post("/explore", data=form(clean="When Mary and John went to the store, John gave a drink to"), headers=HTMX)
    assert 'id="heatmap"' in client.get("/").text  # once run, the default experiment is shown from the store


def test_vendored_assets_are_served_with_licenses(client):
    for path in ("vendor/htmx-2.0.11.min.js", "vendor/plotly-3.7.0.min.js", "vendor/htmx-LICENSE.txt", "vendor/plotly-LICENSE.txt", "app.js", "app.css"):
        assert client.get(f"/static/{path}").status_code == 200, path


def test_live_edit_returns_a_fragment_and_pushes_the_permalink(client, tiny_model):
    response = client.post("/explore", data=form(), headers=HTMX)
    assert response.status_code == 200
    push = response.headers["HX-Push-Url"]
    assert re.fullmatch(r"/runs/[0-9a-f]{16}", push)
    assert "<html" not in response.text  # a fragment, not the page
    # the derived corruption and answers come back out-of-band
    assert f'id="corrupted" class="prompt"' in response.text and f'>{IOI_CORRUPTED}</textarea>' in response.text
    assert 'id="answer" value="Mary"' in response.text and 'id="wrong" value="John"' in response.text
    expected = run(tiny_model, {"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}]})
    assert push == f"/runs/{expected.id}"
    assert f"{expected.clean:.4f}" in response.text and f"{expected.corrupted:.4f}" in response.text


def test_run_page_has_its_json_twin_and_the_same_numbers(client):
    push = client.post("/explore", data=form(), headers=HTMX).headers["HX-Push-Url"]
    page = client.get(push)
    twin = client.get(push + ".json").json()
    assert page.status_code == 200
    assert f'<link rel="alternate" type="application/json" href="{push}.json">' in page.text
    assert f'id="clean-value">{twin["clean"]:.4f}<' in page.text
    assert f"http://testserver{push}" in page.text  # the share link
    assert "metric: logit(answer) − logit(wrong)" in page.text and "corruption:" in page.text


def test_figure1_fragment_for_a_clicked_cell(client):
    push = client.post("/explore", data=form(), headers=HTMX).headers["HX-Push-Url"]
    run_id = push.rsplit("/", 1)[1]
    twin = client.get(push + ".json").json()
    waiting = client.get(f"/runs/{run_id}/figure1?layer=1&head=2", headers=HTMX)  # a GET shows what is stored
    assert waiting.status_code == 200 and 'id="patched-value"' not in waiting.text
    assert f'hx-post="/runs/{run_id}/figure1?layer=1&amp;head=2"' in waiting.text and "mean ablation" in waiting.text
    computed = client.post(f"/runs/{run_id}/figure1?layer=1&head=2", headers=HTMX)  # the button computes them
    assert computed.status_code == 200 and 'class="compute-companions"' not in computed.text
    response = client.get(f"/runs/{run_id}/figure1?layer=1&head=2")
    assert response.status_code == 200
    assert "L1 H2" in response.text
    assert f'id="patched-value">{twin["values"][1][2]:.4f}<' in response.text
    assert "mean ablation of the clean run" in response.text
    for query, field in (("layer=9&head=0", "layer"), ("layer=-4&head=0", "layer"), ("layer=1&head=-1", "head"),
                         ("layer=1", "head"), ("layer=1&head=0&pos=3", "pos")):
        bad = client.get(f"/runs/{run_id}/figure1?{query}")
        assert bad.status_code == 422 and bad.text.startswith('<p class="error"'), query
        assert field in bad.text, query


def test_prompt_text_is_escaped(client):
    evil = "<script>alert(1)</script> When Mary and John went to the store , John gave a drink to"
    response = client.post("/explore", data=form(clean=evil), headers=HTMX)
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_mismatched_lengths_show_both_tokenizations_inline(client):
    response = client.post("/explore", data=form(corruption="custom", corrupted="When Mary and John went to the store gave a drink to"), headers=HTMX)
    assert response.status_code == 200 and "HX-Push-Url" not in response.headers
    text = response.text
    assert re.search(r'id="err-corrupted"[^>]*>prompt 1: clean and corrupted prompts must have the same number of tokens', text)
    assert '<td class="diff">,</td>' in text and '<td class="diff">gave</td>' in text
    assert "clean (15)" in text and "corrupted (13)" in text


def test_non_ioi_prompt_with_generated_corruption_explains_itself(client):
    response = client.post("/explore", data=form(clean="the store had a lot of fun"), headers=HTMX)
    assert "not an IOI-shaped prompt" in response.text and 'id="err-corrupted"' in response.text


def test_unknown_model_in_the_form_is_refused_inline(client):
    response = client.post("/explore", data=form(model="../../etc/passwd"), headers=HTMX)
    assert "unknown model &#39;../../etc/passwd&#39;" in response.text or "unknown model '../../etc/passwd'" in response.text


def test_family_source_generates_pairs(tmp_path):
    from patchstudio.models.default_model import DEFAULT_DIR

    if not (DEFAULT_DIR / "model.safetensors").exists():
        pytest.skip("default model weights not built")
    from patchstudio.models.registry import load_model

    with make_client(tmp_path, load_model("default")) as c:
        response = c.post("/explore", data=form(source="family", family="ioi_swap", n_pairs="3", clean=""), headers=HTMX)
        assert response.status_code == 200, response.text
        assert "3 prompt pairs" in response.text
        assert response.text.count(" | ") >= 9  # the generated pairs are shown in the form
        # the run's link reopens the form with the family, its size, seed and template, not "my own pairs"
        page = c.get(response.headers["HX-Push-Url"]).text
        assert 'name="source" value="family" checked' in page
        assert '<option value="ioi_swap" selected' in page and 'name="n_pairs" min="1" max="64" value="3"' in page


def test_unknown_run_page_is_404_with_a_message(client):
    response = client.get("/runs/0123456789abcdef")
    assert response.status_code == 404 and "no stored run with id" in response.text


def test_recent_runs_on_the_home_page(client):
    client.post("/explore", data=form(component="mlp_out", positions="each"), headers=HTMX)
    text = client.get("/").text
    assert "Recent runs" in text and "mlp_out" in text


def test_long_sweeps_run_as_background_jobs(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=0) as c:
        first = c.post("/explore", data=form(positions="each"), headers=HTMX)
        assert "<progress" in first.text and "HX-Push-Url" not in first.headers
        job_id = re.search(r'hx-get="/jobs/([0-9a-f]{16})"', first.text).group(1)
        for _ in range(200):
            poll = c.get(f"/jobs/{job_id}", headers=HTMX)
            if "HX-Push-Url" in poll.headers:
                break
            time.sleep(0.05)
        assert poll.headers["HX-Push-Url"] == f"/runs/{job_id}"
        assert 'id="heatmap"' in poll.text
        assert c.get(f"/jobs/{job_id}.json").json()["status"] == "done"


def test_cancelled_job_stores_nothing(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=0, chunk_rows=1) as c:
        first = c.post("/explore", data=form(component="pattern", positions="each", source="pair"), headers=HTMX)
        job_id = re.search(r'hx-get="/jobs/([0-9a-f]{16})"', first.text).group(1)
        cancelled = c.post(f"/jobs/{job_id}/cancel", headers=HTMX)
        assert cancelled.status_code == 200
        for _ in range(200):
            status = c.get(f"/jobs/{job_id}.json").json()["status"]
            if status in ("cancelled", "done"):
                break
            time.sleep(0.02)
        assert status == "cancelled"
        assert c.get(f"/runs/{job_id}.json").status_code == 404


def test_attribution_patching_page_and_its_figure1_use_exact_companions(client, tiny_model):
    response = client.post("/explore", data=form(method="attribution_patching", steps="4"), headers=HTMX)
    push = response.headers["HX-Push-Url"]
    assert "attribution patching (integrated-gradients estimate, 4 steps" in response.text
    run_id = push.rsplit("/", 1)[1]
    fig = client.post(f"/runs/{run_id}/figure1?layer=1&head=2").text
    exact = run(tiny_model, {"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}], "component": "head"})
    assert f'id="patched-value">{exact.values[1][2]:.4f}<' in fig  # the exact patch, not the estimate


def test_path_patching_from_the_form(client, tiny_model):
    response = client.post("/explore", data=form(method="path_patching", direction="noise", receivers="L1H2.q, L1H0.v"), headers=HTMX)
    assert "path patching from each head to L1H2.q, L1H0.v (noising" in response.text
    push = response.headers["HX-Push-Url"]
    pair = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
    expected = run(tiny_model, {"method": "path_patching", "prompts": [pair], "direction": "noise",
                                "receivers": [{"layer": 1, "head": 2, "input": "q"}, {"layer": 1, "head": 0, "input": "v"}]})
    assert push == f"/runs/{expected.id}"
    page = client.get(push).text
    assert 'value="L1H2.q L1H0.v"' in page  # the form shows the stored receivers
    bad = client.post("/explore", data=form(method="path_patching", receivers="layer two"), headers=HTMX)
    assert re.search(r'id="err-receivers"[^>]*>receiver &#39;layer&#39; is not like', bad.text)


def test_self_repair_from_the_form(client, tiny_model):
    response = client.post("/explore", data=form(method="self_repair", targets="L0H1", compensator="L1H2", ablation="zero",
                                                 component="mlp_out"), headers=HTMX)
    assert "self-repair after zero-ablating L0H1" in response.text
    pair = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
    expected = run(tiny_model, {"method": "self_repair", "ablation": "zero", "prompts": [pair],
                                "targets": [{"layer": 0, "head": 1}], "compensator": {"layer": 1, "head": 2}})
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    assert f'id="te-value">{expected.extras["total_effect"]:+.4f}<' in response.text
    assert f'id="paired-value">{expected.extras["paired_total_effect"]:+.4f}<' in response.text
    # the paired ablation beside the two single ones, each named
    x = expected.extras
    assert f'id="single-te">{x["total_effect"]:+.4f}<' in response.text
    assert f'id="compensator-te">{x["compensator_total_effect"]:+.4f}<' in response.text
    assert f'id="singles-sum">{x["total_effect"] + x["compensator_total_effect"]:+.4f}<' in response.text
    assert f'id="paired-excess">{x["paired_excess"]:+.4f} ' in response.text
    assert x["paired_excess"] == pytest.approx(x["paired_total_effect"] - x["total_effect"] - x["compensator_total_effect"])
    # the reading under the table follows the sign of the excess, never a fixed sentence
    hid = (x["paired_excess"] < 0) == (x["total_effect"] < 0)
    reading = re.search(r'id="paired-reading">(.*?)</p>', response.text, re.S).group(1)
    assert reading.startswith("Ablating both costs no more than") == (not hid)
    assert ("the part of the targets' role that single ablation hid" in reading) == hid
    # compensators: only those moving against DE, each head with a pair-ablate button (never the paired one)
    compensators = analysis.top_compensators(expected)
    assert all((c.change > 0) == (x["direct_effect"] < 0) for c in compensators)
    for c in compensators:
        if c.head is not None and c.name != "L1H2":
            assert f'data-compensator="{c.name}">Pair-ablate {c.name} with the targets<' in response.text
    assert 'data-compensator="L1H2"' not in response.text
    # TE - DE named for what it is, never "the network's response"; movers both ways, MLPs included
    assert "the rest of the network&#39;s response: all the targets&#39; indirect effects plus any reactive repair" in response.text
    assert "the network's response" not in response.text and "understates" not in response.text
    de = x["direct_effect"]
    listed = {m.name for m in analysis.movers(expected, n=100)}
    for l, v in enumerate(x["mlp_delta"]):
        share = (1 if de < 0 else -1) * v / abs(de)
        table = "compensators" if share > 0 else "amplifiers"
        section = re.search(rf'id="{table}">(.*?)</table>', response.text, re.S).group(1)
        assert (f"<td>MLP{l}</td>" in section) == (abs(share) >= analysis.MOVER_FLOOR and f"MLP{l}" in listed)
    for l, row in enumerate(expected.values):  # heads under the floor get no button
        for h, v in enumerate(row):
            if abs(v) < analysis.MOVER_FLOOR * abs(de):
                assert f'data-compensator="L{l}H{h}"' not in response.text
    bad = client.post("/explore", data=form(method="self_repair", targets="two heads"), headers=HTMX)
    assert re.search(r'id="err-targets"[^>]*>targets: &#39;two&#39; is not a head', bad.text)


def test_figure1_triangulates_the_selected_head_across_methods(client, tiny_model):
    push = client.post("/explore", data=form(), headers=HTMX).headers["HX-Push-Url"]
    run_id = push.rsplit("/", 1)[1]
    text = client.post(f"/runs/{run_id}/figure1?layer=0&head=1").text
    pair = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
    common = {"prompts": [pair], "component": "head"}
    expected = {
        "activation patching (restoration, sufficiency-style)": run(tiny_model, common).values[0][1],
        "mean ablation (necessity-style)": run(tiny_model, {**common, "method": "ablation"}).values[0][1],
        "attribution estimate (linear) of the patching row": run(tiny_model, {**common, "method": "attribution_patching"}).values[0][1],
        "path patching to the logits, MLPs recomputed (restoration, sufficiency-style)":
            run(tiny_model, {**common, "method": "path_patching", "direction": "denoise"}).values[0][1],
        "mean ablation: total effect (TE, change)":
            run(tiny_model, {**common, "method": "self_repair", "targets": [{"layer": 0, "head": 1}]}).extras["total_effect"],
    }
    assert 'id="triangulation"' in text
    for method, value in expected.items():  # share of the gap first, then the raw value
        assert re.search(rf">{re.escape(method)}</a></td><td class=\"num\">-?\d+%</td><td class=\"num\">{value:.4f}<", text), method


def test_input_influence_shows_a_bar_per_clean_token(client, tiny_model):
    response = client.post("/explore", data=form(method="input_influence", steps="8"), headers=HTMX)
    assert "input influence of each clean token (integrated gradients from the corrupted prompt, 8 steps)" in response.text
    pair = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
    expected = run(tiny_model, {"method": "input_influence", "prompts": [pair], "steps": 8})
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    assert '"type": "bar"' in response.text and "S2 (John): " in response.text  # the token's role, and the token
    assert 'id="figure1"' not in response.text  # no layer to select


def test_attribution_page_reports_agreement_with_exact_patching(client):
    response = client.post("/explore", data=form(method="attribution_patching"), headers=HTMX)
    run_id = response.headers["HX-Push-Url"].rsplit("/", 1)[1]
    assert 'id="agreement"' in response.text and 'id="pearson">' not in response.text  # exact patching not stored yet
    assert f'hx-post="/runs/{run_id}/agreement"' in response.text
    computed = client.post(f"/runs/{run_id}/agreement", headers=HTMX)
    assert computed.status_code == 200 and 'id="pearson">' in computed.text
    page = client.get(f"/runs/{run_id}").text
    assert 'id="pearson">' in page and "Largest disagreements: L" in page
    not_attribution = client.post("/api/runs", json={"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}]}).json()
    refused = client.get(f"/runs/{not_attribution['id']}/agreement")
    assert refused.status_code == 422 and "attribution patching results only" in refused.text


def test_large_companion_runs_become_jobs_whose_progress_the_figure_polls(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=1) as c:
        first = c.post("/api/runs", json={"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}]})
        run_id = first.json()["id"]  # over the synchronous cost: queued
        for _ in range(400):
            if c.get(f"/jobs/{run_id}.json").json()["status"] == "done":
                break
            time.sleep(0.05)
        url = f"/runs/{run_id}/figure1?layer=1&head=2"
        offer = c.get(url, headers=HTMX).text
        assert "as a background job" in offer and 'class="compute-companions"' in offer
        started = c.post(url, headers=HTMX).text
        assert "in the background" in started and f'hx-get="{url.replace("&", "&amp;")}"' in started  # it polls the GET
        for _ in range(600):
            shown = c.get(url, headers=HTMX).text
            if 'id="figure1-caption"' in shown and "in the background" not in shown:
                break
            time.sleep(0.05)
        assert 'id="patched-value"' in shown and 'id="triangulation"' in shown


def test_word_level_vocabulary_is_offered_as_help(client):
    text = client.get("/").text
    assert re.search(r'<details class="vocab" id="vocabulary"><summary>Words this model knows \(\d+\)</summary>', text)
    names = re.search(r"<strong>names</strong>: ([^<]+)</p>", text).group(1).split()
    assert {"Mary", "John", "Alice", "Bob"} <= set(names) and "store" not in names
    assert 'list="known-names"' in text and '<option value="Mary">' in text
    bad = client.post("/explore", data=form(clean="When Mary and Xavier went to the store , Xavier gave a drink to"), headers=HTMX)
    assert "&#39;Xavier&#39; is not in this model&#39;s vocabulary" in bad.text


def test_warnings_reference_and_spread_are_on_the_page(client):
    same = form(corruption="custom", corrupted=IOI, auto_answers="on")
    text = client.post("/explore", data=same, headers=HTMX).text
    assert 'id="result-warnings"' in text and "the clean and corrupted prompts are the same tokens" in text
    spread = client.post("/explore", data=form(source="family", family="custom", n_pairs="2", pairs_text="\n".join(
        [f"{IOI} | {IOI_CORRUPTED} | Mary | John",
         "When Alice and Bob went to the garden , Bob gave a book to | When Alice and Bob went to the garden , Alice gave a book to | Alice | Bob"])),
        headers=HTMX).text
    assert "Each cell is the mean over 2 prompt pairs" in spread and "over n = 2 prompts: sd " in spread
    ablated = client.post("/explore", data=form(method="ablation"), headers=HTMX).text
    assert "Ablation reference: " in ablated


TWO_PAIRS = "\n".join([
    f"{IOI} | {IOI_CORRUPTED} | Mary | John",
    "When Alice and Bob went to the garden , Bob gave a book to | When Alice and Bob went to the garden , Alice gave a book to | Alice | Bob",
    "When Tom and Anna went to the school , Anna gave a ring to | When Tom and Anna went to the school , Tom gave a ring to | Tom | Anna",
])


def _strip(text: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="prompt-strip-data">(.*?)</script>', text, re.S).group(1))


@pytest.mark.parametrize("view", ["share", "change", "raw"])
def test_selected_cell_on_each_prompt_in_the_page_view(client, view):
    push = client.post("/explore", data=form(source="family", family="custom", pairs_text=TWO_PAIRS), headers=HTMX).headers["HX-Push-Url"]
    run_id = push.rsplit("/", 1)[1]
    twin = client.get(push + ".json").json()
    page = client.get(f"{push}?_view={view}&_layer=1&_head=2").text
    fig = _strip(page)
    points, mean = fig["data"]
    shown = twin["views"][view]
    assert fig["layout"]["xaxis"]["title"]["text"].replace("<br>", " ") == shown["title"]  # unit and baseline
    # each prompt's raw value, mapped into the view by hand
    raw = [one[1][2] for one in twin["per_prompt"]]
    base, other = twin["corrupted"], twin["clean"]  # denoising: no effect is the corrupted run
    expected = {"raw": raw, "change": [v - base for v in raw], "share": [(v - base) / (other - base) for v in raw]}[view]
    assert len(points["x"]) == 3 and points["x"] == pytest.approx(expected, abs=1e-9)
    assert mean["x"][0] == pytest.approx(shown["values"][1][2], abs=1e-12)
    assert mean["x"][0] == pytest.approx(sum(expected) / 3, abs=1e-6)  # the mean of the points (float32 sums)
    lo, hi = sorted({"raw": v, "change": v - base, "share": (v - base) / (other - base)}[view]
                    for v in (twin["ci_low"][1][2], twin["ci_high"][1][2]))
    assert mean["error_x"]["arrayminus"][0] == pytest.approx(mean["x"][0] - lo) and mean["error_x"]["array"][0] == pytest.approx(hi - mean["x"][0])
    assert 'id="prompt-strip-caption">Selected <strong>L1 H2</strong> on each of <span class="num" id="cell-n">3</span>' in page
    assert f'id="cell-ci">{lo:+.4f} to {hi:+.4f}<' in page
    # a click asks for the fragment: the same figure for that cell, in the view the page shows
    assert f'data-url="/runs/{run_id}/prompts?_view={view}"' in page
    fragment = client.get(f"/runs/{run_id}/prompts?layer=1&head=2&_view={view}", headers=HTMX).text
    assert "<html" not in fragment and _strip(fragment) == fig
    assert client.get(f"/runs/{run_id}/prompts?layer=9&head=2").status_code == 422
    assert client.get(f"/runs/{run_id}/prompts?layer=1&head=2&_view=odd").status_code == 422


def test_one_prompt_pair_shows_one_point_and_no_interval(client):
    push = client.post("/explore", data=form(), headers=HTMX).headers["HX-Push-Url"]
    page = client.get(push + "?_layer=0&_head=1").text
    points, mean = _strip(page)["data"]
    assert len(points["x"]) == 1 and "error_x" not in mean
    assert "(one prompt pair: no spread)" in page
