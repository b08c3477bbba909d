"""A run as code: the Python that reproduces it from a notebook, and its spec as JSON."""

from __future__ import annotations

import json
import re

from patchstudio.specs import SpecBase


def spec_json(spec: SpecBase) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=2, ensure_ascii=False)


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\b(true|false|null)\b')
_PYTHON = {"true": "True", "false": "False", "null": "None"}


def python_literal(data: object) -> str:
    """JSON data as a Python literal, laid out as ``json.dumps(indent=4)`` (a JSON string is a Python
    string literal; only the bare true, false and null differ, and only outside strings)."""
    body = json.dumps(data, indent=4, ensure_ascii=False)
    return _JSON_TOKEN.sub(lambda m: _PYTHON[m.group(1)] if m.group(1) else m.group(0), body)


def reproduce(spec: SpecBase) -> str:
    """The lines that recompute ``spec`` with ``patchstudio.run`` (``patchstudio`` imported) and assert
    that it is the same experiment: the same spec gives the same id."""
    return (
        f"spec = {python_literal(spec.model_dump(mode='json'))}\n"
        f"model = patchstudio.load_model({spec.model!r})\n"
        "result = patchstudio.run(spec, model=model)\n"
        f"assert result.id == {spec.id!r}  # the same experiment as the shared link\n"
    )


def python_snippet(spec: SpecBase) -> str:
    """Runs the same experiment (same spec, so the same id) with ``patchstudio.run``."""
    return (
        "import patchstudio\n\n"
        + reproduce(spec)
        + "print(result.axes, result.clean, result.corrupted)\n"
        "result.values  # nested lists in axes order, mean over the prompts\n"
    )
