"""A run as code: the Python that reproduces it from a notebook, and its spec as JSON."""

from __future__ import annotations

import json

from patchstudio.specs import SpecBase


def spec_json(spec: SpecBase) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False)


def python_snippet(spec: SpecBase) -> str:
    """Runs the same experiment (same spec, so the same id) with ``patchstudio.run``."""
    body = json.dumps(spec.model_dump(mode="json"), indent=4, ensure_ascii=False)
    body = body.replace(": true", ": True").replace(": false", ": False").replace(": null", ": None")
    return (
        "import patchstudio\n\n"
        f"spec = {body}\n"
        f"model = patchstudio.load_model({spec.model!r})\n"
        "result = patchstudio.run(spec, model=model)\n"
        f"assert result.id == {spec.id!r}  # the same experiment as the shared link\n"
        "print(result.axes, result.clean, result.corrupted)\n"
        "result.values  # nested lists in axes order, mean over the prompts\n"
    )
