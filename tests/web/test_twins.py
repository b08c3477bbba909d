"""Each page and its .json twin show the same data (they come from one data function)."""

from __future__ import annotations

import html

from helpers import TINY_PAIRS

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


def test_a_run_page_shows_its_twins_evidence_views_and_baselines(client):
    run_id = client.post("/api/runs", json=HEADS).json()["id"]
    twin = client.get(f"/runs/{run_id}.json").json()
    for view in ("share", "change", "raw"):
        text = html.unescape(client.get(f"/runs/{run_id}?_view={view}").text)
        assert f"Evidence: {twin['evidence']}." in text
        assert f'id="clean-value">{twin["clean"]:.4f}<' in text and f'id="corrupted-value">{twin["corrupted"]:.4f}<' in text
        assert f"in {twin['views'][view]['title']}:" in text  # the selected cell's caption names the view's unit
    assert twin["views"]["default"] == "share"


def test_the_compare_page_shows_its_twins_numbers(client):
    a = client.post("/api/runs", json=HEADS).json()["id"]
    b = client.post("/api/runs", json={**HEADS, "direction": "noise"}).json()["id"]
    twin = client.get(f"/compare.json?a={a}&b={b}").json()
    text = html.unescape(client.get(f"/compare?a={a}&b={b}").text)
    assert f'id="max-diff">{twin["max_abs_diff"]:.4f}<' in text and f"({twin['title']})" in text
    assert (twin["a_id"], twin["b_id"]) == (a, b)
