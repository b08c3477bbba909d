"""What the web layer needs of a method: its menu label, its form fields, its claim line, and an
optional result section (a template under frontend/templates/methods/ with its own context)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from patchstudio.analysis import Reading


def direction_phrase(spec) -> str:
    return "denoising: clean → corrupted run" if spec.direction == "denoise" else "noising: corrupted → clean run"


def no_context(service: Any, reading: Reading) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class WebMethod:
    name: str  # the engine method's name
    label: str  # the method menu's text
    fields: tuple[str, ...]  # the form fields (web.forms.FIELDS) its spec takes, in form order
    claim: Callable[[Any], str]  # spec -> what was done, in words ("activation patching (denoising: ...)")
    partial: str | None = None  # a result section: template path under frontend/templates/
    context: Callable[[Any, Reading], dict[str, Any]] = no_context  # (service, the result's Reading) -> the partial's context
    heatmap: bool = True  # False: the result has no layer x head grid (edges); its partial draws it instead
