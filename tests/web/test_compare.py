"""/compare?a=&b=: two runs on one scale and their difference, with a .json twin; clear refusals."""

from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio.web import figures

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


def _store(client, spec) -> str:
    response = client.post("/api/runs", json=spec)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def flat(values):
    return [v for row in values for v in row]


def _logit_diff(model, pairs, which: str) -> float:
    """The mean logit difference on the pairs' clean or corrupted prompts: a plain forward pass."""
    tokens = model.to_tokens([p[which] for p in pairs])
    ids = lambda key: torch.tensor([int(model.to_tokens(p[key], prepend_bos=False)[0, 0]) for p in pairs])  # noqa: E731
    with torch.no_grad():
        last = model(tokens)[:, -1]
    rows = torch.arange(len(pairs))
    return float((last[rows, ids("answer")] - last[rows, ids("wrong")]).mean())


def test_compare_two_head_sweeps(client, tiny_model):
    """Shares by hand from each run's raw cells: denoising restores (v − corrupted) / gap, noising
    destroys (clean − v) / gap."""
    a = _store(client, HEADS)
    b = _store(client, {**HEADS, "direction": "noise"})
    data = client.get(f"/compare.json?a={a}&b={b}").json()
    ra, rb = run(tiny_model, HEADS), run(tiny_model, {**HEADS, "direction": "noise"})
    clean, corrupted = _logit_diff(tiny_model, TINY_PAIRS, "clean"), _logit_diff(tiny_model, TINY_PAIRS, "corrupted")
    gap = clean - corrupted
    share_a = [(v - corrupted) / gap for v in flat(ra.values)]
    share_b = [(clean - v) / gap for v in flat(rb.values)]
    assert data["view"] == "share" and data["no_effect"] == 0.0
    assert flat(data["a"]) == pytest.approx(share_a, abs=1e-5)
    assert flat(data["b"]) == pytest.approx(share_b, abs=1e-5)
    assert flat(data["diff"]) == pytest.approx([x - y for x, y in zip(share_a, share_b)], abs=1e-5)
    assert data["max_abs_diff"] == pytest.approx(max(abs(x - y) for x, y in zip(share_a, share_b)), abs=1e-5)
    assert data["range"] == pytest.approx([min(share_a + share_b + [0.0]), max(share_a + share_b + [0.0])], abs=1e-5)  # one scale
    page = client.get(f"/compare?a={a}&b={b}")
    assert page.status_code == 200 and 'id="compare-diff"' in page.text
    assert f'<link rel="alternate" type="application/json" href="/compare.json?a={a}&amp;b={b}">' in page.text
    # links may be pasted whole
    assert client.get(f"/compare.json?a=http://host/runs/{a}&b=/runs/{b}?_view=raw").status_code == 200


def _white_point(figure: dict) -> float:
    """The value a diverging heatmap draws as "no effect": where its scale has the neutral colour."""
    neutral = dict((round(stop, 9), colour) for stop, colour in figures.diverging(-1.0, 1.0, 0.0)[0])[0.5]
    trace = figure["data"][0]
    (stop,) = {s for s, colour in trace["colorscale"] if colour == neutral}
    return trace["zmin"] + stop * (trace["zmax"] - trace["zmin"])


def test_the_raw_view_has_no_effect_at_each_runs_baseline(client, tiny_model):
    """In raw metric units "no effect" is the run that was intervened on (denoising: the corrupted
    run's logit diff), not 0; the range and the heatmaps' white point sit there."""
    a = _store(client, HEADS)
    b = _store(client, {**HEADS, "prompts": TINY_PAIRS[::-1]})  # the same sweep, the prompts in another order
    corrupted = _logit_diff(tiny_model, TINY_PAIRS, "corrupted")
    assert abs(corrupted) > 0.1  # so 0 and the baseline can be told apart
    data = client.get(f"/compare.json?a={a}&b={b}&_view=raw").json()
    assert data["view"] == "raw" and data["no_effect"] == pytest.approx(corrupted, abs=1e-5)
    cells = flat(run(tiny_model, HEADS).values)
    assert flat(data["a"]) == pytest.approx(cells, abs=1e-5)
    assert data["range"] == pytest.approx([min(cells + [corrupted]), max(cells + [corrupted])], abs=1e-5)
    text = client.get(f"/compare?a={a}&b={b}&_view=raw").text
    for name in ("compare-a", "compare-b"):
        found = re.search(rf'<script type="application/json" id="{name}-data">(.*?)</script>', text, re.S)
        assert _white_point(json.loads(found.group(1))) == pytest.approx(corrupted, abs=1e-5), name


def test_compare_refuses_runs_whose_axes_differ(client):
    a = _store(client, HEADS)
    b = _store(client, {**HEADS, "component": "resid_pre", "positions": "each"})
    response = client.get(f"/compare.json?a={a}&b={b}")
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "run A has 2 layers × 4 heads and run B has 2 layers × 15 positions: they cannot be compared cell by cell"
    )
    page = client.get(f"/compare?a={a}&b={b}")
    assert page.status_code == 422 and "cannot be compared cell by cell" in page.text
    assert client.get(f"/compare.json?a={a}&b=0123456789abcdef").status_code == 404


def test_run_page_offers_compare_with(client):
    a = _store(client, HEADS)
    b = _store(client, {**HEADS, "direction": "noise"})
    text = client.get(f"/runs/{b}").text
    assert 'id="compare-with"' in text and f'href="/compare?a={b}&amp;b={a}"' in text
