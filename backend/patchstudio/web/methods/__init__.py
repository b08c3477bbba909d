"""The web side of the method registry: one module per method (menu label, form fields, claim
line, optional result section). Every engine method must have one (checked at import)."""

from __future__ import annotations

from patchstudio.engine.methods import METHODS
from patchstudio.specs import COMPONENT_LABELS
from patchstudio.analysis import corruption_summary, metric_label
from patchstudio.web.methods import (
    ablation,
    activation_patching,
    attribution_patching,
    circuit,
    direct_effect,
    edge_patching,
    input_influence,
    logit_attribution,
    logit_lens,
    path_patching,
    self_repair,
)
from patchstudio.web.methods.base import WebMethod

_MODULES = (activation_patching, ablation, attribution_patching, path_patching, self_repair, input_influence, direct_effect,
            logit_lens, logit_attribution, circuit, edge_patching)
_BY_NAME = {m.WEB.name: m.WEB for m in _MODULES}
_MISSING = [name for name in METHODS if name not in _BY_NAME]
if _MISSING:
    raise ImportError(f"no web module for method(s) {', '.join(_MISSING)}: add one under patchstudio/web/methods/")
# In the engine registry's order (the method menu's order).
WEB_METHODS: dict[str, WebMethod] = {name: _BY_NAME[name] for name in METHODS}

__all__ = ["WEB_METHODS", "WebMethod", "describe"]


def describe(result) -> str:
    """One line: what was done, to which component, under which metric and corruption."""
    spec = result.spec
    web = WEB_METHODS[spec.method]
    component = f"{COMPONENT_LABELS[spec.component]} · " if web.heatmap else ""  # edges' claims name their nodes
    return f"{web.claim(spec)} · {component}metric: {metric_label(result)} · {corruption_summary(result)}"


def summary(spec: dict) -> dict[str, str]:
    """What a stored spec asked for, in four short words for lists (recent runs, jobs): method,
    component (or the ablated heads), direction (or the kind of ablation) and metric. Read from the
    stored JSON, so a spec an older version wrote still lists."""
    method = spec.get("method", "")
    web = WEB_METHODS.get(method)
    targets = spec.get("targets")
    if targets:
        component = " ".join(f"L{t.get('layer')}H{t.get('head')}" for t in targets[:4]) + (" …" if len(targets) > 4 else "")
    else:
        component = spec.get("component", "")
    if spec.get("direction"):
        direction = spec["direction"]
    elif spec.get("ablation"):
        direction = f"{spec['ablation']} ablation"
    else:
        direction = ""
    return {"method": web.label if web else method, "component": component, "direction": direction,
            "metric": spec.get("metric", "")}
