"""Every hover of a mean says how many prompts it averages ("n = 2 prompts"): each method's page
figures (heatmaps, bars, the parts, the repair bars, the agreement and faithfulness curves), Figure 1
and the /compare grids. n comes from the prompts posted, not from the figure code."""

from __future__ import annotations

import json
import re

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine.methods import METHODS
from patchstudio.results import PatchResult
from patchstudio.web import figures

REQUIRED = {"targets": [{"layer": 0, "head": 1}], "edges": ["input->a0.h0<q>"]}
N = len(TINY_PAIRS)


def _spec(method: str) -> dict:
    cls = METHODS[method].spec
    data = {"method": method, "prompts": TINY_PAIRS}
    data.update({f: REQUIRED[f] for f, info in cls.model_fields.items() if info.is_required() and f != "prompts"})
    return data


def _figures(text: str) -> dict[str, dict]:
    found = {}
    for name, body in re.findall(r'<script type="application/json" id="([a-z0-9-]+)-data">(.*?)</script>', text, re.S):
        figure = json.loads(body)
        if isinstance(figure, dict) and "data" in figure:
            found[name] = figure
    return found


def _flat(values) -> list:
    return [x for v in values for x in _flat(v)] if isinstance(values, list) else [values]


def hovers(trace: dict) -> list[str]:
    """What a hover shows for each point of a trace (its template with %{text}/%{hovertext} filled in)."""
    template = trace.get("hovertemplate", "")
    for key in ("text", "hovertext"):
        if f"%{{{key}}}" in template:
            return [template.replace(f"%{{{key}}}", str(t)) for t in _flat(trace[key]) if t]
    return [template]


def assert_n(figure: dict, n: int, where: str) -> int:
    """Every hovered trace names n; returns how many traces were checked."""
    checked = 0
    for trace in figure["data"]:
        if trace.get("hoverinfo") == "skip" or trace.get("type") not in ("heatmap", "bar", "scatter"):
            continue
        if trace.get("name") == "each prompt":  # the prompt strip's points: one prompt each, not a mean
            continue
        texts = hovers(trace)
        assert texts, where
        for text in texts:
            assert f"n = {n} prompt{'s' if n != 1 else ''}" in text, (where, text)
        checked += 1
    return checked


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_page_hover_names_n(client, method):
    run_id = client.post("/api/runs", json=_spec(method)).json()["id"]
    page = client.get(f"/runs/{run_id}").text
    found = _figures(page)
    checked = sum(assert_n(fig, N, f"{method} {name}") for name, fig in found.items()
                  if not name.startswith("attention"))  # attention patterns are one prompt's, not means
    if method == "edge_patching":  # a table, no figure: its caption says n
        assert f"mean over {N} prompt pairs" in page
    else:
        assert checked >= 1, (method, sorted(found))


def test_one_prompt_hover_says_n_1(client):
    run_id = client.post("/api/runs", json={**_spec("activation_patching"), "prompts": TINY_PAIRS[:1]}).json()["id"]
    heatmap = _figures(client.get(f"/runs/{run_id}").text)["heatmap"]
    assert all("n = 1 prompt pair: no spread" in h for h in hovers(heatmap["data"][0]))


def test_figure1_and_agreement_hovers_name_n(client):
    run_id = client.post("/api/runs", json=_spec("activation_patching")).json()["id"]
    result = PatchResult.model_validate(client.get(f"/runs/{run_id}.json").json())
    assert assert_n(figures.figure1(result, "L0 H1", 0.5, 0.25, "mean"), N, "figure 1") == 1
    stats = {"exact": [0.1, 0.2], "estimate": [0.1, 0.3], "names": ["L0 H0", "L0 H1"]}
    assert assert_n(figures.agreement_scatter(stats, N), N, "agreement") == 1


def test_compare_grids_name_n_of_each_run(client):
    a = client.post("/api/runs", json=_spec("activation_patching")).json()["id"]
    b = client.post("/api/runs", json={**_spec("activation_patching"), "prompts": TINY_PAIRS[:1]}).json()["id"]
    found = _figures(client.get("/compare", params={"a": a, "b": b, "_view": "share"}).text)
    assert assert_n(found["compare-a"], N, "A") == 1 and assert_n(found["compare-b"], 1, "B") == 1
    diff = hovers(found["compare-diff"]["data"][0])
    assert all(f"A mean over n = {N} prompts, B over n = 1 prompt" in h for h in diff)
