"""Reading results: cells, views, baselines, triangulation, agreement, verdicts, compensators. Pure.

Importable from a notebook with no web code::

    from patchstudio import analysis
    reading = analysis.read(result)                                    # the method asked once; every view
    reading.view("share").values                                       # or analysis.view(result, "share")
    specs = analysis.triangulation_specs(spec, layer=2, head=2)        # the runs to compare
    runs = {role: patchstudio.run(s, model=model) for role, s in specs.items()}
    table = analysis.triangulate(result, runs, layer=2, head=2)       # rows + plain-language flags

``views`` (cells, views, baselines, shares, two runs compared, agreement), ``triangulation`` (the
companion runs, their table and its flags; the verdict is built from those flags),
``self_repair`` (the readings of a self-repair run), ``significance`` (the scale a view is drawn on,
the floor under which a result says its effects are too small, the cells whose interval covers "no
effect", a cell's spread in a view's units) and ``logit_attribution`` (a direct logit
attribution's parts in one list). Every threshold a reading uses is a named
constant, so a page and a notebook read a result the same way.
"""

from __future__ import annotations

from patchstudio.analysis.logit_attribution import LogitParts, Part, logit_parts
from patchstudio.analysis.self_repair import MOVER_FLOOR, RESPONSE_LABEL, Compensator, Mover, movers, repair_reading, top_compensators
from patchstudio.analysis.significance import (
    DEFAULT_SCALE,
    EFFECT_FLOOR,
    SCALE_LABELS,
    SCALES,
    Scale,
    Spread,
    covers_no_effect,
    default_scale,
    fine_percent,
    floor_notice,
    largest_effect,
    largest_share,
    offered_scales,
    scale,
    scale_label,
    spread,
)
from patchstudio.analysis.triangulation import (
    ATTRIBUTION_OFF,
    COMPENSATED,
    DIRECT_MIN,
    LARGE_SHARE,
    PATH_MIN_PATCHING,
    PATH_MOSTLY_INDIRECT,
    SMALL_SHARE,
    Triangulation,
    exact_patching_spec,
    mean_ablation_spec,
    moved_share,
    removed_share,
    triangulate,
    triangulation_flags,
    triangulation_specs,
    verdict,
)
from patchstudio.analysis.views import (
    METRIC_UNITS,
    SEQUENCE_METRIC_UNITS,
    VIEW_LABELS,
    VIEWS,
    ZERO_GAP,
    CellPrompts,
    Reading,
    View,
    agreement,
    all_views,
    axes_shape,
    cell_name,
    cell_prompts,
    cell_value,
    compare,
    corruption_summary,
    default_pos,
    default_view,
    evidence,
    flat_cells,
    gap,
    metric_label,
    metric_unit,
    multi_token,
    no_effect,
    pearson,
    percent,
    position_axis_title,
    position_labels,
    position_roles,
    position_tokens,
    ranks,
    read,
    share_defined,
    strongest_cell,
    view,
)

__all__ = [
    "DEFAULT_SCALE", "EFFECT_FLOOR", "SCALES", "SCALE_LABELS", "Scale", "Spread", "covers_no_effect", "default_scale", "fine_percent",
    "floor_notice", "largest_effect", "largest_share", "offered_scales", "scale", "scale_label", "spread",
    "ATTRIBUTION_OFF", "COMPENSATED", "DIRECT_MIN", "LARGE_SHARE", "METRIC_UNITS", "PATH_MIN_PATCHING",
    "PATH_MOSTLY_INDIRECT", "SEQUENCE_METRIC_UNITS", "SMALL_SHARE", "VIEWS", "VIEW_LABELS", "ZERO_GAP",
    "CellPrompts", "Compensator", "MOVER_FLOOR", "Mover", "RESPONSE_LABEL", "LogitParts", "Part", "Reading", "Triangulation", "View",
    "agreement", "all_views", "axes_shape", "cell_name", "cell_prompts", "cell_value", "compare", "corruption_summary",
    "default_pos", "default_view", "evidence", "exact_patching_spec", "flat_cells", "gap", "logit_parts", "mean_ablation_spec",
    "metric_label", "metric_unit", "moved_share", "multi_token", "no_effect", "pearson", "percent", "position_axis_title", "position_labels",
    "position_roles", "position_tokens", "movers", "ranks", "read", "removed_share", "repair_reading", "share_defined",
    "strongest_cell", "top_compensators",
    "triangulate", "triangulation_flags", "triangulation_specs", "verdict", "view",
]
