"""/compare?a=&b=: two runs on one scale and their difference, with a .json twin; clear refusals."""

from __future__ import annotations

import pytest

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


def _store(client, spec) -> str:
    response = client.post("/api/runs", json=spec)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_compare_two_head_sweeps(client, tiny_model):
    a = _store(client, HEADS)
    b = _store(client, {**HEADS, "direction": "noise"})
    data = client.get(f"/compare.json?a={a}&b={b}").json()
    ra, rb = run(tiny_model, HEADS), run(tiny_model, {**HEADS, "direction": "noise"})
    share_a, share_b = analysis.view(ra, "share").values, analysis.view(rb, "share").values
    flat_a, flat_b = [v for row in share_a for v in row], [v for row in share_b for v in row]
    assert data["view"] == "share"
    assert [v for row in data["a"] for v in row] == pytest.approx(flat_a)
    assert [v for row in data["b"] for v in row] == pytest.approx(flat_b)
    assert data["diff"][1][2] == pytest.approx(share_a[1][2] - share_b[1][2])
    flat = [v for row in share_a + share_b for v in row]
    assert data["range"] == pytest.approx([min(flat + [0.0]), max(flat + [0.0])])  # one scale for both
    page = client.get(f"/compare?a={a}&b={b}")
    assert page.status_code == 200 and 'id="compare-diff"' in page.text
    assert f'<link rel="alternate" type="application/json" href="/compare.json?a={a}&amp;b={b}">' in page.text
    # links may be pasted whole
    assert client.get(f"/compare.json?a=http://host/runs/{a}&b=/runs/{b}?_view=raw").status_code == 200


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
