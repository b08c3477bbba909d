"""Patch Studio: causal interventions on transformer language models.

From a notebook::

    import patchstudio
    model = patchstudio.load_model()            # the shipped default model
    result = patchstudio.run({"prompts": [...], "component": "head"}, model=model)
    result.values                               # layer x head, mean over the prompts
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LOADED: dict[tuple[str, str], Any] = {}


def load_model(name: str = "default", *, device: str = "cpu", dtype: str = "float32"):
    """A TransformerBridge by name: a built-in model (``"default"``; see ``BUILTIN_MODELS``), a
    Hugging Face model whose weights are reachable (cache or network), or a directory saved with
    ``save_pretrained``; on ``device`` in ``dtype`` (float32, bfloat16 or float16).

    Loaded once per process and reused."""
    from patchstudio.models.registry import load_model as _load

    key = (name, device) if dtype == "float32" else (name, device, dtype)
    if key not in _LOADED:
        _LOADED[key] = _load(name, device=device, dtype=dtype)
    return _LOADED[key]


def run(spec: Any, model: Any = None, **options: Any):
    """Run an experiment spec (a spec object, a dict or JSON) and return its ``PatchResult``.

    ``model`` may be any TransformerBridge (e.g. one you built); by default the spec's model is
    loaded by name. ``options`` go to ``patchstudio.engine.run.run`` (chunk_rows, progress, ...).
    """
    from patchstudio.engine.run import run as _run
    from patchstudio.specs import parse_spec

    spec = parse_spec(spec)
    return _run(model if model is not None else load_model(spec.model), spec, **options)


__all__ = ["__version__", "load_model", "run"]
