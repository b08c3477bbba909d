"""One component under several methods: the companion runs to compute, the table of their shares of
the clean-corrupted gap, and plain-language flags where the methods disagree. Pure.

"Triangulate necessity and sufficiency": a claim is stronger when restoration-style (patching) and
necessity-style (ablation) evidence tell the same story. Every threshold is a named constant, and
the Figure 1 verdict is built from the same flags as the table, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from patchstudio.analysis.views import ZERO_GAP, cell_value, gap, percent
from patchstudio.engine.methods.attribution_patching import ATTRIBUTION_COMPONENTS
from patchstudio.results import PatchResult
from patchstudio.specs import HeadRef, SpecBase, spec_classes

# --- thresholds (shares of the clean-corrupted gap) ---------------------------------------------------

LARGE_SHARE = 0.3  # "large": patching restores / ablation removes at least this share of the gap
SMALL_SHARE = 0.1  # "small": under this share
ATTRIBUTION_OFF = 0.2  # the linear estimate is "unreliable" when it misses exact patching by more
PATH_MOSTLY_INDIRECT = 0.5  # "mostly through later components": the direct effect under this fraction of patching
PATH_MIN_PATCHING = 0.2  # ...judged only when patching itself is at least this share
DIRECT_MIN = 0.1  # self-repair judged only when the direct effect is at least this share
COMPENSATED = 0.5  # "compensates": the total effect under this fraction of the direct effect


# --- the companion runs --------------------------------------------------------------------------------


def _common(spec: SpecBase) -> dict[str, Any]:
    return {"model": spec.model, "prompts": spec.prompts, "component": spec.component, "positions": spec.positions, "metric": spec.metric}


def _spec(method: str, **fields: Any) -> SpecBase:
    return spec_classes()[method](**fields)


def exact_patching_spec(spec: SpecBase) -> SpecBase:
    """Exact activation patching of the same sweep (an attribution spec keeps its direction)."""
    return _spec("activation_patching", direction=getattr(spec, "direction", "denoise"), **_common(spec))


def attribution_estimate_spec(spec: SpecBase) -> SpecBase | None:
    """The attribution-patching estimate of an exact activation-patching sweep: the same prompts (and
    prompt set), metric, component, positions and direction; None where attribution patching does
    not take the component, or ``spec`` is not activation patching."""
    if spec.method != "activation_patching" or spec.component not in ATTRIBUTION_COMPONENTS:
        return None
    data = {"prompt_set": spec.prompt_set} if spec.prompt_set is not None else {}
    return _spec("attribution_patching", direction=spec.direction, **_common(spec), **data)


def mean_ablation_spec(spec: SpecBase) -> SpecBase:
    """Mean ablation of the same component on the clean run."""
    return _spec("ablation", ablation="mean", **_common(spec))


def triangulation_specs(spec: SpecBase, layer: int | None = None, head: int | None = None) -> dict[str, SpecBase]:
    """The companion runs that put one component of ``spec`` under every method, on the same prompts
    and metric: exact patching and (mean) ablation always; the attribution estimate where the
    component supports it; for a whole head, path patching to the logits (MLPs recomputed), the
    direct effect (through the unembedding alone, key "direct") and self-repair's TE/DE."""
    out = {
        "patching": exact_patching_spec(spec),
        # an ablation run is its own necessity bar, under its own ablation
        "ablation": spec if spec.method == "ablation" else mean_ablation_spec(spec),
    }
    common = _common(spec)
    direction = out["patching"].direction
    if spec.method == "attribution_patching":  # the page's own estimate (linear or integrated gradients)
        out["attribution"] = spec
    elif spec.component in ATTRIBUTION_COMPONENTS:
        out["attribution"] = _spec("attribution_patching", direction=direction, **common)
    if spec.component == "head" and spec.positions == "all" and head is not None and layer is not None:
        out["path"] = _spec("path_patching", direction=direction, **common)
        out["direct"] = _spec("direct_effect", direction=direction, **common)
        if spec.metric == "logit_diff":
            out["repair"] = _spec("self_repair", targets=[HeadRef(layer=layer, head=head)], **common)
    return out


# --- shares of the gap and what they say together -------------------------------------------------------


def moved_share(result: PatchResult, value: float, direction: str) -> float:
    """A patched metric as the share of the gap it moved away from the intervened run: restored
    towards the clean run when denoising, destroyed towards the corrupted one when noising."""
    g = gap(result)
    return (value - result.corrupted) / g if direction == "denoise" else (result.clean - value) / g


def removed_share(result: PatchResult, value: float) -> float:
    """An ablated metric as the share of the gap it removed from the clean run."""
    return (result.clean - value) / gap(result)


def triangulation_flags(share: dict[str, float]) -> list[str]:
    """Plain-language readings where the methods disagree, from shares of the gap by row key
    (patching, ablation, attribution, path, direct, total_effect, direct_effect). "Through later
    components" is judged on the direct effect ("direct"), not on path patching to the logits,
    whose path also runs through every later MLP."""
    patch, ablate = share["patching"], share["ablation"]
    flags = []
    if abs(patch) > LARGE_SHARE and abs(ablate) < SMALL_SHARE:
        flags.append("Large patching effect but small ablation drop: redundancy or self-repair suspected.")
    if abs(ablate) > LARGE_SHARE and abs(patch) < SMALL_SHARE:
        flags.append("Ablation hurts but patching alone does not restore: necessary, not sufficient.")
    attr = share.get("attribution")
    if attr is not None and abs(attr - patch) > ATTRIBUTION_OFF:
        flags.append(f"The linear estimate is off by {percent(abs(attr - patch))} of the gap: attribution is unreliable here.")
    direct = share.get("direct")
    if direct is not None and abs(patch) > PATH_MIN_PATCHING and abs(direct) < PATH_MOSTLY_INDIRECT * abs(patch):
        flags.append("Most of its effect goes through later components, not directly to the logits.")
    te, de = share.get("total_effect"), share.get("direct_effect")
    if te is not None and de is not None and abs(de) > DIRECT_MIN and abs(te) < COMPENSATED * abs(de):
        flags.append("Its direct effect is larger than its total effect: the network compensates (self-repair).")
    return flags


def verdict(result: PatchResult, patched: float, ablated: float, direction: str) -> str:
    """Plain words for what the patching and ablation bars say together: their shares of the gap,
    then the flags those two shares raise (``triangulation_flags``)."""
    if abs(gap(result)) < ZERO_GAP:
        return "Clean and corrupted runs agree, so this corruption cannot show an effect."
    restored, dropped = moved_share(result, patched, direction), removed_share(result, ablated)
    part = "restores" if direction == "denoise" else "breaks"
    text = f"Patching {part} {percent(restored)} of the clean–corrupted gap; ablating it removes {percent(dropped)}."
    return " ".join([text, *triangulation_flags({"patching": restored, "ablation": dropped})])


@dataclass(frozen=True)
class Triangulation:
    rows: list[dict[str, Any]] = field(default_factory=list)  # key, method, value, share, run_id
    flags: list[str] = field(default_factory=list)


def triangulate(result: PatchResult, runs: dict[str, PatchResult], layer: int | None, pos: int | None, head: int | None) -> Triangulation:
    """The selected cell under every method in ``runs`` (from ``triangulation_specs``), each as a
    share of the clean-corrupted gap (movement away from the intervened run, towards the other),
    with plain-language flags where they disagree."""
    g = gap(result)
    if abs(g) < ZERO_GAP:
        return Triangulation()
    patching = runs["patching"]
    direction = patching.spec.direction
    rows = []

    def add(key: str, label: str, value: float, share_of_gap: float, run: PatchResult) -> None:
        rows.append({"key": key, "method": label, "value": value, "share": share_of_gap, "run_id": run.id})

    def moved(key: str, label: str, run: PatchResult, value: float) -> None:
        add(key, label, value, moved_share(result, value, direction), run)

    kind = "restoration, sufficiency-style" if direction == "denoise" else "noising, necessity-style"
    moved("patching", f"activation patching ({kind})", patching, cell_value(patching, layer, pos, head))
    ablation = runs["ablation"]
    value = cell_value(ablation, layer, pos, head)
    add("ablation", f"{ablation.spec.ablation} ablation (necessity-style)", value, removed_share(result, value), ablation)
    if "attribution" in runs:
        attribution = runs["attribution"]
        steps = attribution.spec.steps
        how = "linear" if steps == 1 else f"integrated gradients, {steps} steps"
        moved("attribution", f"attribution estimate ({how}) of the patching row", attribution,
              cell_value(attribution, layer, pos, head))
    if "path" in runs:
        moved("path", f"path patching to the logits, MLPs recomputed ({kind})", runs["path"], cell_value(runs["path"], layer, None, head))
    if "direct" in runs:
        moved("direct", f"direct effect on the logits, final LayerNorm scale frozen ({kind})", runs["direct"],
              cell_value(runs["direct"], layer, None, head))
    if "repair" in runs:
        repair = runs["repair"]
        x = repair.extras or {}
        how = f"{repair.spec.ablation} ablation"
        # changes of the metric on the clean run: as a share of the gap, a drop counts positive
        add("total_effect", f"{how}: total effect (TE, change)", x["total_effect"], -x["total_effect"] / g, repair)
        add("direct_effect", f"{how}: direct effect (DE, change)", x["direct_effect"], -x["direct_effect"] / g, repair)
    return Triangulation(rows, triangulation_flags({r["key"]: r["share"] for r in rows}))
