"""How big a result's effects are, and which of them the prompts support. Pure; read from a ``Reading``.

- ``scale``: the range a view is drawn on. The share view is fixed to the gap by default: −1..1,
  the whole clean−corrupted gap either way, so an effect of 0.02% of the gap stays pale instead of
  filling the colour bar. A data range (``"data"``) magnifies, and its title says by how much
  ("×50: largest effect 2% of the gap"): a choice in the share view, the default in the change and
  raw views, whose units are the metric's (a self-repair run's changes in direct effect, 5% of the
  gap, would be all but white on the gap). The change view can be fixed to ± the gap too.
- ``floor_notice``: a result whose largest |effect| is under ``EFFECT_FLOOR`` of the gap says so.
- ``covers_no_effect``: the cells whose 95% interval of the mean includes "no effect": at this many
  prompts they cannot be told apart from no effect (a page marks them).
- ``spread``: one cell's n, standard deviation and interval in a view's units (for hovers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from patchstudio.analysis.views import Reading, flat_cells

EFFECT_FLOOR = 0.01  # under 1% of the gap, the largest effect is too small to read as a finding
SCALES = ("gap", "data")
DEFAULT_SCALE = "gap"  # the share view's
SCALE_LABELS = {"gap": "fixed to the gap", "data": "data range"}


@dataclass(frozen=True)
class Scale:
    """The range a view is drawn on, in the view's units, with white ("no effect") at ``mid``."""

    name: str  # the scale drawn: "gap" or "data"
    lo: float
    hi: float
    mid: float
    zoom: float | None  # how much a data-range scale magnifies over the gap scale; None for the gap scale
    title: str  # what a figure's title says about the scale ('' for the plain gap scale)
    note: str = ""  # why the requested scale was not drawn


@dataclass(frozen=True)
class Spread:
    """One cell over its prompts, in a view's units."""

    n: int
    sd: float | None
    ci_low: float | None  # None when the result carries no interval (or one prompt)
    ci_high: float | None
    covers_no_effect: bool


def fine_percent(x: float) -> str:
    """A share as a percentage with two significant digits below 10%: '2%', '0.022%', '38%'."""
    p = abs(x) * 100
    if p == 0:
        return "0%"
    return f"{round(p):d}%" if p >= 9.5 else f"{p:.2g}%"


def zoom_words(zoom: float) -> str:
    return f"×{zoom:.0f}" if zoom >= 9.5 else f"×{zoom:.2g}"


def _gap_unit(reading: Reading, view_name: str) -> float:
    """The whole gap in the view's units (share: 1; change and raw: |span| in metric units)."""
    return 1.0 if view_name == "share" else abs(reading.span)


def largest_effect(reading: Reading) -> float:
    """The largest |change from no effect| over the cells, in metric units."""
    return max((abs(v) for _, v in flat_cells(reading.result, reading.view("change").values)), default=0.0)


def largest_share(reading: Reading) -> float | None:
    """The largest |effect| as a share of the gap (None when the gap is 0)."""
    if not reading.intervenes:  # a reading of one run has no effects to compare with a gap
        return None
    return largest_effect(reading) / abs(reading.span) if reading.share_defined and reading.span else None


def scale_label(reading: Reading, name: str) -> str:
    """A scale's button label: 'fixed to the gap', "fixed to the clean run's logit difference"."""
    return f"fixed to {reading.share_name}" if name == "gap" else SCALE_LABELS[name]


def default_scale(view_name: str) -> str:
    """The scale a view is drawn on unless another is asked for: the gap for the share view, the
    data range (zoom stated) for the views in metric units."""
    return DEFAULT_SCALE if view_name == "share" else "data"


def offered_scales(reading: Reading, view_name: str | None = None) -> list[str]:
    """The scales a page offers for a view: both where the gap gives one (share, change), else none."""
    shown = reading.view(view_name)
    return list(SCALES) if reading.share_defined and shown.name in ("share", "change") else []


def scale(reading: Reading, view_name: str | None = None, name: str | None = None,
          cells: list[float] | None = None) -> Scale:
    """The range view ``view_name`` is drawn on (``name``: "gap" or "data"; default ``default_scale``).
    ``cells``: the values drawn, in the view's units (default every cell of the view)."""
    shown = reading.view(view_name)
    name = name or default_scale(shown.name)
    if name not in SCALES:
        raise ValueError(f"unknown scale {name!r}: use one of {', '.join(SCALES)}")
    values = cells if cells is not None else [v for _, v in flat_cells(reading.result, shown.values)]
    mid = shown.no_effect
    lo, hi = min(values + [mid]), max(values + [mid])
    note = ""
    if not reading.share_defined:
        return Scale("data", lo, hi, mid, None, "data range (the gap is 0: no scale to fix it to)",
                     "the clean and corrupted runs agree, so there is no gap to fix the scale to" if name == "gap" else "")
    if not reading.intervenes:  # a reading of one run (the logit lens): no effect, no gap to measure a zoom by
        return Scale("data", lo, hi, mid, None, "", "")
    unit = _gap_unit(reading, shown.name)
    if name == "gap" and shown.name in ("share", "change"):
        reach = max(mid - lo, hi - mid)
        title = "" if reach <= unit else f"scale widened: a cell moves {fine_percent(reach / unit)} of {reading.share_name}"
        return Scale("gap", min(lo, mid - unit), max(hi, mid + unit), mid, None, title)
    if name == "gap":
        note = "the raw metric is drawn on its data range; its colours are not fixed to the gap"
    reach = max(mid - lo, hi - mid)
    if reach <= 0:
        return Scale("data", lo, hi, mid, None, "every cell shows no effect", note)
    zoom = unit / reach
    return Scale("data", lo, hi, mid, zoom, f"data range {zoom_words(zoom)}: largest effect {fine_percent(reach / unit)} of {reading.share_name}", note)


def floor_notice(reading: Reading) -> str:
    """Words for a result whose largest |effect| is under ``EFFECT_FLOOR`` of the gap ('' otherwise)."""
    share = largest_share(reading)
    if share is None or share >= EFFECT_FLOOR:
        return ""
    largest = largest_effect(reading)
    of = (f"the {abs(reading.span):.3g} {reading.unit} gap" if reading.share_base is None
          else f"{reading.share_name} ({reading.span:.3g} {reading.unit})")
    return (f"Under the floor: the largest effect here is {largest:.2g} {reading.unit}, {fine_percent(share)} of "
            f"{of} (the floor is {fine_percent(EFFECT_FLOOR)} of {reading.share_name}). "
            "No cell moves the metric enough to read as a finding; on the gap scale they stay pale.")


def _prompt_count(reading: Reading) -> int:
    result = reading.result
    return len(result.per_prompt) if result.per_prompt is not None else len(result.prompts)


def _at(nested: Any, path: list[int]) -> float:
    for i in path:
        nested = nested[i]
    return float(nested)


def covers_no_effect(reading: Reading) -> Any | None:
    """Per cell (nested like the values): True where the 95% interval of the mean includes "no
    effect". None when the result carries no interval (one prompt, or stored before intervals)."""
    result = reading.result
    if result.ci_low is None or result.ci_high is None or _prompt_count(reading) < 2:
        return None
    base = reading.no_effect  # raw units, like the interval

    def build(lo: Any, hi: Any) -> Any:
        if isinstance(lo, list):
            return [build(a, b) for a, b in zip(lo, hi)]
        return min(lo, hi) <= base <= max(lo, hi)

    return build(result.ci_low, result.ci_high)


def spread(reading: Reading, view_name: str | None, path: list[int]) -> Spread:
    """Cell ``path`` (indices along the result's axes) over its prompts, in view ``view_name``'s units:
    the sd scales by the view's slope, the interval's ends map through the view (a negative span
    flips them)."""
    result, shown = reading.result, reading.view(view_name)
    n = _prompt_count(reading)
    if result.ci_low is None or result.ci_high is None or not result.std or n < 2:
        return Spread(n, None, None, None, False)
    lo_raw, hi_raw = _at(result.ci_low, path), _at(result.ci_high, path)
    ends = sorted((shown.of(lo_raw), shown.of(hi_raw)))
    slope = shown.of(1.0) - shown.of(0.0)
    sd = abs(slope) * _at(result.std, path)
    covers = min(lo_raw, hi_raw) <= reading.no_effect <= max(lo_raw, hi_raw)
    return Spread(n, sd if math.isfinite(sd) else None, ends[0], ends[1], covers)
