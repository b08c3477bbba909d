"""Scale and significance, each reading from a hand formula: the gap-fixed scale and the data range
with its zoom in words, the floor notice, the cells whose interval covers "no effect", and one cell's
interval in the shown view's units."""

from __future__ import annotations

import pytest

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


@pytest.fixture(scope="module")
def denoised(tiny_model):
    return run(tiny_model, HEADS)


@pytest.fixture(scope="module")
def noised(tiny_model):
    return run(tiny_model, {**HEADS, "direction": "noise"})


def with_shares(result, shares, base, span, ci=None, std=None):
    """The result with each cell set to ``base + share * span`` (and, given, its interval in shares)."""
    update = {"values": [[base + s * span for s in row] for row in shares]}
    if ci is not None:
        update["ci_low"] = [[base + lo * span for lo, _ in row] for row in ci]
        update["ci_high"] = [[base + hi * span for _, hi in row] for row in ci]
    if std is not None:
        update["std"] = std
    return result.model_copy(update=update)


def zeros_like(result, fill=0.0):
    return [[fill for _ in row] for row in result.values]


def test_share_is_drawn_on_the_whole_gap_by_default(denoised):
    gap = denoised.clean - denoised.corrupted
    shares = zeros_like(denoised)
    shares[0][1], shares[1][3] = 0.02, -0.005  # the largest effect is 2% of the gap
    reading = analysis.read(with_shares(denoised, shares, denoised.corrupted, gap))
    s = analysis.scale(reading, "share")
    assert (s.name, s.lo, s.hi, s.mid, s.zoom, s.title) == ("gap", -1.0, 1.0, 0.0, None, "")
    # the change view, fixed to the gap when asked: the same scale in metric units, the gap either way of 0
    c = analysis.scale(reading, "change", "gap")
    assert (c.lo, c.hi, c.mid) == (pytest.approx(-abs(gap)), pytest.approx(abs(gap)), 0.0)
    # by default the views in metric units are drawn on their data range, zoom stated
    d = analysis.scale(reading, "change")
    ends = sorted((-0.005 * gap, 0.02 * gap))  # the cells' changes, either side of 0
    assert (d.name, d.lo, d.hi) == ("data", pytest.approx(ends[0]), pytest.approx(ends[1]))
    assert d.title == "data range ×50: largest effect 2% of the gap"


def test_data_range_states_its_zoom(denoised):
    gap = denoised.clean - denoised.corrupted
    shares = zeros_like(denoised)
    shares[0][1], shares[1][3] = 0.02, -0.005
    reading = analysis.read(with_shares(denoised, shares, denoised.corrupted, gap))
    s = analysis.scale(reading, "share", "data")
    assert s.name == "data" and s.lo == pytest.approx(-0.005) and s.hi == pytest.approx(0.02)
    assert s.zoom == pytest.approx(1 / 0.02)
    assert s.title == "data range ×50: largest effect 2% of the gap"
    # the raw view is drawn on its data range; its zoom is the same, in metric units
    raw = analysis.scale(reading, "raw")
    assert raw.name == "data" and raw.zoom == pytest.approx(50.0)
    ends = sorted((denoised.corrupted - 0.005 * gap, denoised.corrupted + 0.02 * gap))
    assert (raw.lo, raw.hi) == (pytest.approx(ends[0]), pytest.approx(ends[1]))


def test_gap_scale_widens_only_where_a_cell_passes_the_gap(noised):
    span = noised.corrupted - noised.clean  # noising: share 1 = the corrupted run
    shares = zeros_like(noised)
    shares[1][0] = 1.3
    reading = analysis.read(with_shares(noised, shares, noised.clean, span))
    s = analysis.scale(reading, "share")
    assert (s.lo, s.hi) == (-1.0, pytest.approx(1.3))
    assert s.title == "scale widened: a cell moves 130% of the gap"


def test_unknown_scale_is_refused(denoised):
    with pytest.raises(ValueError, match="unknown scale"):
        analysis.scale(analysis.read(denoised), "share", "log")


@pytest.mark.parametrize("largest, notice", [(0.0002, True), (0.0099, True), (0.0101, False), (0.4, False)])
def test_floor_notice_under_one_percent_of_the_gap(denoised, largest, notice):
    gap = denoised.clean - denoised.corrupted
    shares = zeros_like(denoised)
    shares[1][2] = -largest
    reading = analysis.read(with_shares(denoised, shares, denoised.corrupted, gap))
    text = analysis.floor_notice(reading)
    assert analysis.EFFECT_FLOOR == 0.01
    if not notice:
        assert text == ""
        return
    pct = f"{largest * 100:.2g}%"
    assert text.startswith(f"Under the floor: the largest effect here is {largest * abs(gap):.2g} logit diff, {pct} of the "
                           f"{abs(gap):.3g} logit diff gap (the floor is 1% of the gap).")


def test_cells_whose_interval_covers_no_effect(denoised):
    gap = denoised.clean - denoised.corrupted
    shares = zeros_like(denoised, 0.3)
    ci = [[(0.1, 0.5) for _ in row] for row in denoised.values]
    ci[0][0] = (-0.2, 0.5)  # covers 0: marked
    ci[1][3] = (0.0, 0.6)  # touches 0: marked
    ci[1][1] = (0.01, 0.6)  # does not
    reading = analysis.read(with_shares(denoised, shares, denoised.corrupted, gap, ci=ci))
    marks = analysis.covers_no_effect(reading)
    expected = [[lo <= 0.0 <= hi for lo, hi in row] for row in ci]
    assert marks == expected and sum(map(sum, marks)) == 2


def test_one_prompt_has_no_interval_to_mark(tiny_model):
    result = run(tiny_model, {**HEADS, "prompts": TINY_PAIRS[:1]})
    assert analysis.covers_no_effect(analysis.read(result)) is None


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_a_cells_interval_in_the_shown_views_units(tiny_model, direction):
    result = run(tiny_model, {**HEADS, "direction": direction})
    reading = analysis.read(result)
    base = result.corrupted if direction == "denoise" else result.clean
    span = (result.clean if direction == "denoise" else result.corrupted) - base
    lo, hi, sd = result.ci_low[1][2], result.ci_high[1][2], result.std[1][2]
    share = analysis.spread(reading, "share", [1, 2])
    assert share.n == 2
    ends = sorted(((lo - base) / span, (hi - base) / span))  # noising: a negative span flips the ends
    assert (share.ci_low, share.ci_high) == (pytest.approx(ends[0]), pytest.approx(ends[1]))
    assert share.sd == pytest.approx(sd / abs(span))
    change = analysis.spread(reading, "change", [1, 2])
    assert (change.ci_low, change.ci_high, change.sd) == (pytest.approx(lo - base), pytest.approx(hi - base), pytest.approx(sd))
    raw = analysis.spread(reading, "raw", [1, 2])
    assert (raw.ci_low, raw.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert share.covers_no_effect == (lo <= base <= hi)
