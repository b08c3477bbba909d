"""Figures draw the scale and significance readings: the share view on −1..1 by default, a data range
whose title states its zoom, faded and struck cells whose interval covers no effect, hovers whose
interval is of the shown number in its units with n, and bars with error bars and no text on them.
Expected values come from hand formulas on the result's own numbers."""

from __future__ import annotations

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio.web import figures

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


@pytest.fixture(scope="module")
def heads(tiny_model):
    return run(tiny_model, HEADS)


def set_shares(result, shares, ci):
    """``result`` with each cell at ``share`` of the gap and its interval at ``ci`` (shares)."""
    base, gap = result.corrupted, result.clean - result.corrupted
    return result.model_copy(update={
        "values": [[base + s * gap for s in row] for row in shares],
        "ci_low": [[base + lo * gap for lo, _ in row] for row in ci],
        "ci_high": [[base + hi * gap for _, hi in row] for row in ci],
    })


def test_share_view_is_fixed_to_the_gap(heads):
    trace = figures.heatmap(heads)["data"][0]
    gap = heads.clean - heads.corrupted
    shares = [(v - heads.corrupted) / gap for row in heads.values for v in row]
    assert (trace["zmin"], trace["zmax"]) == (pytest.approx(min(-1.0, *shares)), pytest.approx(max(1.0, *shares)))


def test_a_data_range_says_how_much_it_magnifies(heads):
    shares = [[0.0] * len(heads.values[0]) for _ in heads.values]
    shares[1][1] = -0.02
    shares[0][3] = 0.004
    ci = [[(s - 0.001, s + 0.001) for s in row] for row in shares]
    result = set_shares(heads, shares, ci)
    gap_fig = figures.heatmap(result)
    assert (gap_fig["data"][0]["zmin"], gap_fig["data"][0]["zmax"]) == (-1.0, 1.0)
    assert "data range" not in gap_fig["layout"]["title"]["text"]
    fig = figures.heatmap(result, scale="data")
    trace = fig["data"][0]
    assert (trace["zmin"], trace["zmax"]) == (pytest.approx(-0.02), pytest.approx(0.004))
    assert "data range ×50: largest effect 2% of the gap" in fig["layout"]["title"]["text"]


def test_cells_whose_interval_covers_no_effect_are_faded_and_struck(heads):
    shares = [[0.3] * len(heads.values[0]) for _ in heads.values]
    ci = [[(0.1, 0.5)] * len(row) for row in shares]
    ci[0] = [(-0.1, 0.5)] + ci[0][1:]  # L0 H0 covers 0
    ci[1] = ci[1][:2] + [(0.0, 0.4)] + ci[1][3:]  # L1 H2 touches it
    fig = figures.heatmap(set_shares(heads, shares, ci))
    fade, strokes = fig["data"][1], fig["data"][2]
    expected = [[1 if lo <= 0 <= hi else None for lo, hi in row] for row in ci]
    assert fade["z"] == expected and fade["hoverinfo"] == "skip"
    assert list(zip(strokes["x"], strokes["y"])) == [("H0", "L0"), ("H2", "L1")]
    assert strokes["hoverinfo"] == "skip"
    # nothing covers no effect: nothing drawn over the cells
    clear = [[(0.1, 0.5)] * len(row) for row in shares]
    assert len(figures.heatmap(set_shares(heads, shares, clear))["data"]) == 1


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_hover_interval_is_of_the_shown_number_in_its_units(tiny_model, direction):
    result = run(tiny_model, {**HEADS, "direction": direction})
    base = result.corrupted if direction == "denoise" else result.clean
    span = (result.clean if direction == "denoise" else result.corrupted) - base
    lo, hi, sd = result.ci_low[1][2], result.ci_high[1][2], result.std[1][2]
    share = figures.heatmap(result, view="share")["data"][0]["text"][1][2]
    a, b = sorted(((lo - base) / span, (hi - base) / span))
    assert share.startswith(f"L1 H2: share {(result.values[1][2] - base) / span:+.3f}")
    assert share.endswith(f"<br>over n = 2 prompts: sd {sd / abs(span):.3f}, 95% CI {a:+.3f} to {b:+.3f} (share of the gap)")
    change = figures.heatmap(result, view="change")["data"][0]["text"][1][2]
    assert change.endswith(f"<br>over n = 2 prompts: sd {sd:.3f}, 95% CI {lo - base:+.3f} to {hi - base:+.3f} (change, logit diff)")


def test_layer_bars_carry_error_bars_and_no_text(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer"})
    base, gap = result.corrupted, result.clean - result.corrupted
    fig = figures.heatmap(result)  # the share of the gap
    trace = fig["data"][0]
    shares = [(v - base) / gap for v in result.values]
    ends = [sorted(((lo - base) / gap, (hi - base) / gap)) for lo, hi in zip(result.ci_low, result.ci_high)]
    assert "text" not in trace and trace["textposition"] == "none"  # nothing printed on the bars
    assert trace["hovertext"][1].startswith(f"L1: share {shares[1]:+.3f}")
    assert trace["error_y"]["array"] == pytest.approx([b - s for s, (_, b) in zip(shares, ends)])
    assert trace["error_y"]["arrayminus"] == pytest.approx([s - a for s, (a, _) in zip(shares, ends)])
    assert trace["marker"]["opacity"] == [0.35 if a <= 0 <= b else 1.0 for a, b in ends]
    low, high = fig["layout"]["yaxis"]["range"]
    assert low == pytest.approx(min([-1.0] + [a for a, _ in ends])) and high == pytest.approx(max([1.0] + [b for _, b in ends]))


def test_token_bars_carry_error_bars_and_no_text(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "method": "input_influence"})
    trace = figures.heatmap(result, view="change")["data"][0]
    assert "text" not in trace and trace["textposition"] == "none"
    assert trace["error_y"]["array"] == pytest.approx([hi - v for v, hi in zip(result.values, result.ci_high)])
    assert trace["error_y"]["arrayminus"] == pytest.approx([v - lo for v, lo in zip(result.values, result.ci_low)])
