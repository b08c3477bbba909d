"""The method registry: one module per method, registered in the table below.

A method module defines its spec class (a ``SpecBase`` with ``method: Literal["name"]``), its run
for one prompt pair, and a ``METHOD = Method(...)`` that names them (with its cost, axes and
defaults where they differ from a sweep over sites). ``run()``, the CLI, the API and the web forms
all read this table; see docs/adding-a-method.md.
"""

from __future__ import annotations

from patchstudio.engine.methods import (
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
from patchstudio.engine.methods.base import Method, PairContext, PairResult
from patchstudio.errors import InputError
from patchstudio.specs import register

# The order methods are offered in (the form's method menu).
METHODS: dict[str, Method] = {
    m.METHOD.name: m.METHOD
    for m in (activation_patching, ablation, attribution_patching, path_patching, self_repair, input_influence, direct_effect,
              logit_lens, logit_attribution, circuit, edge_patching)
}
for _method in METHODS.values():
    register(_method.spec)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InputError(f"unknown method {name!r}: use one of {', '.join(METHODS)}", field="method") from None


__all__ = ["METHODS", "Method", "PairContext", "PairResult", "get_method"]
