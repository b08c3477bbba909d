"""The logit lens's and direct logit attribution's pages: the figure's unit and baseline, every
component's bar and row against the plain-hook reference (tests/lens_references.py), the sum check,
and no Figure 1 for a reading of one run."""

from __future__ import annotations

import json
import re

import pytest
import torch

import lens_references as LR
import references as R
from web_helpers import HTMX, IOI, IOI_CORRUPTED, form

PAIR = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}


def _figure(text: str, script_id: str) -> dict:
    return json.loads(re.search(rf'<script type="application/json" id="{script_id}">(.*?)</script>', text, re.S).group(1))


def _own_logit_diff(model, tokens) -> float:
    logits = model(tokens)[0, -1].detach().double()
    return float(logits[model.to_single_token(" Mary")] - logits[model.to_single_token(" John")])


def test_logit_lens_page_states_unit_and_baseline_and_has_no_figure1(client, tiny_model):
    response = client.post("/explore", data=form(method="logit_lens", run="corrupted"), headers=HTMX)
    assert response.status_code == 200
    text = response.text
    assert "logit lens of the corrupted run: each layer&#39;s residual stream read through the final norm" in text
    assert 'id="lens-unit">logits (logit(answer) − logit(wrong))</strong>' in text
    assert 'white = 0 (<span id="lens-zero">no preference between the answer and the wrong token</span>)' in text
    pair = R.pairs_of(tiny_model, [PAIR])[0]
    own = float(re.search(r'id="lens-own">([^<]+)<', text).group(1))
    assert own == pytest.approx(_own_logit_diff(tiny_model, pair.corrupted), abs=1e-4)
    heatmap = _figure(text, "heatmap-data")
    n_layers = int(tiny_model.cfg.n_layers)
    assert heatmap["data"][0]["y"] == [f"L{i}" for i in range(n_layers)] + ["final"]
    assert heatmap["layout"]["yaxis"]["title"]["text"] == "residual stream before layer"
    ref = LR.lens(tiny_model, [pair], "logit_diff", "corrupted")
    assert torch.allclose(torch.tensor(heatmap["data"][0]["z"]), ref, atol=1e-4)
    assert heatmap["data"][0]["colorbar"]["title"]["text"].replace("<br>", " ").endswith("(corrupted run); white = 0")
    assert 'id="figure1"' not in text  # nothing to patch: a reading of one run
    run_id = response.headers["HX-Push-Url"].rsplit("/", 1)[1]
    refused = client.get(f"/runs/{run_id}/figure1", params={"layer": 0, "pos": 0})
    assert refused.status_code == 422
    assert "the logit lens reads one run and has none to patch" in refused.text
    page = client.get(f"/runs/{run_id}")  # the permalink reopens the form as it made the run
    assert page.status_code == 200 and 'id="lens-unit"' in page.text
    assert re.search(r'<option value="corrupted" selected>the corrupted run</option>', page.text)
    twin = client.get(f"/runs/{run_id}.json").json()
    assert twin["axes"] == ["layer", "pos"] and len(twin["values"]) == n_layers + 1


def test_logit_attribution_page_shows_every_component_adding_up(client, tiny_model):
    response = client.post("/explore", data=form(method="logit_attribution"), headers=HTMX)
    assert response.status_code == 200
    text = response.text
    pair = R.pairs_of(tiny_model, [PAIR])[0]
    ref = LR.attribution(tiny_model, [pair], "clean")
    n_layers = int(tiny_model.cfg.n_layers)
    heads = LR.heads_grid(tiny_model, ref)
    expected = {"token embedding": ref["embed"], "position embedding": ref["pos_embed"],
                **{f"L{l} attention": float(heads[l].sum()) + ref[f"L{l} attn bias"] for l in range(n_layers)},
                **{f"L{l} MLP": ref[f"L{l} MLP"] for l in range(n_layers)}}
    rows = dict(re.findall(r'<tr><td>([^<]+)</td><td class="num">([^<]+)</td></tr>', text))
    for name, value in expected.items():
        assert float(rows[name]) == pytest.approx(value, abs=2e-4), name
    # the two biases together are what the reference reads with the final stream set to 0
    assert float(rows["final norm bias"]) + float(rows["unembedding bias"]) == pytest.approx(ref["bias"], abs=2e-4)
    own = _own_logit_diff(tiny_model, pair.clean)
    assert float(re.search(r'id="parts-total">([^<]+)<', text).group(1)) == pytest.approx(own, abs=2e-4)
    assert float(re.search(r'id="parts-metric">([^<]+)<', text).group(1)) == pytest.approx(own, abs=2e-4)
    assert re.search(r'id="parts-check">\(they agree', text)
    hand_scale = float(tiny_model.run_with_cache(pair.clean)[1][LR.SCALE][0, -1, 0])
    assert float(re.search(r'id="parts-scale">([^<]+)<', text).group(1)) == pytest.approx(hand_scale, abs=1e-4)
    assert "The final norm's scale is frozen at the clean run's own value" in text
    bars = _figure(text, "parts-data")
    assert bars["data"][0]["x"] == list(expected)[:2] + [n for l in range(n_layers) for n in (f"L{l} attention", f"L{l} MLP")] + [
        "final norm bias", "unembedding bias"]
    assert bars["layout"]["yaxis"]["title"]["text"] == "logit(answer) − logit(wrong), logits (0 = none)"
    assert bars["layout"]["title"]["text"].replace("<br>", " ") == (
        "direct logit attribution of the clean run, per component (final norm's scale frozen)")
    assert 'id="figure1"' in text  # the heads can be patched and ablated


def test_logit_attribution_refuses_another_metric_beside_the_field(client):
    response = client.post("/explore", data=form(method="logit_attribution", metric="prob"), headers=HTMX)
    slot = re.search(r'id="err-metric"[^>]*>([^<]+)<', response.text)
    assert slot is not None and "prob is not a sum of parts: use logit_diff" in slot.group(1)


@pytest.mark.parametrize("run", ["clean", "corrupted"])
def test_logit_attribution_shares_are_of_the_runs_logit_difference(client, tiny_model, run):
    """The parts sum to the read run's logit difference, not to the clean−corrupted gap: the share
    view divides by it (by hand: each head's contribution / that run's own logit difference), the
    shares of every part sum to 1, and the axis, hover, captions and the .json twin name it."""
    response = client.post("/explore", data=form(method="logit_attribution", run=run), headers=HTMX)
    run_id = response.headers["HX-Push-Url"].rsplit("/", 1)[1]
    pair = R.pairs_of(tiny_model, [PAIR])[0]
    own = _own_logit_diff(tiny_model, pair.clean if run == "clean" else pair.corrupted)
    gap = _own_logit_diff(tiny_model, pair.clean) - _own_logit_diff(tiny_model, pair.corrupted)
    assert abs(own - gap) > 0.1  # the two denominators differ here, so the test tells them apart
    ref = LR.attribution(tiny_model, [pair], run)
    heads = LR.heads_grid(tiny_model, ref)
    text = client.get(f"/runs/{run_id}", params={"_view": "share"}, headers=HTMX).text
    heatmap = _figure(text, "heatmap-data")
    z = torch.tensor(heatmap["data"][0]["z"], dtype=torch.float64)
    assert torch.allclose(z, heads.double() / own, atol=1e-4)
    others = sum(v for k, v in ref.items() if not re.fullmatch(r"L\d+H\d+", k) and k != "metric")
    assert float(z.sum()) + others / own == pytest.approx(1.0, abs=1e-4)
    words = f"the {run} run&#39;s logit difference, which the parts sum to"
    colorbar = heatmap["data"][0]["colorbar"]["title"]["text"].replace("<br>", " ")
    assert f"share of the {run} run's logit difference, which the parts sum to" in colorbar
    assert "gap" not in colorbar
    hovers = [h for row in heatmap["data"][0]["text"] for h in row]
    assert all(f"(share of the {run} run's logit difference)" in h for h in hovers if "95% CI" in h)
    assert f"Shares are of {words}" in text  # the heatmap's caption
    caption = re.search(rf'id="parts-share">The share view divides each contribution by the {run} run\'s logit '
                        r'difference\s*\(<span class="num">([^<]+)</span>\), which the parts sum to', text)
    assert caption is not None and float(caption.group(1)) == pytest.approx(own, abs=1e-4)
    assert f"share of the {run} run&#39;s logit difference</a>" in text  # the view's button
    twin = client.get(f"/runs/{run_id}.json").json()["views"]
    assert twin["share_of"] == f"the {run} run's logit difference, which the parts sum to"
    assert twin["share_base"] == pytest.approx(own, abs=1e-4)
    assert "which the parts sum to" in twin["share"]["title"]
    png = json.loads(re.search(r"data-caption='([^']*)'", text).group(1).replace("&#34;", '"'))
    assert any(line.startswith(f"Shares are of the {run} run's logit difference") for line in png["lines"])
