"""A study as a Jupyter notebook (nbformat 4.5): the title and notes as a Markdown cell, a setup cell,
then per run its claim (a Markdown cell) and a code cell that recomputes it with ``patchstudio.run``
from its spec, asserts the same id and the same baselines, and draws it.

The drawing is a plain-text table in the run's default view (the view its page opens in): matplotlib
and plotly are not patchstudio dependencies, and a table needs nothing but Python, so the notebook runs
wherever patchstudio does, headless in CI included (``jupyter execute``). The study's page draws the
interactive heatmaps; the notebook links to it.
"""

from __future__ import annotations

import json
from typing import Any

from patchstudio.models.default_model import BUILTIN_MODELS
from patchstudio.models.tracr import TRACR_MODELS
from patchstudio.store import StoredRun
from patchstudio.studies import StoredStudy
from patchstudio.web import export
from patchstudio.web import url_builder as urls
from patchstudio.web.methods import describe

SETUP = '''import math

import patchstudio
from patchstudio import analysis

SHADES = " ░▒▓█"


def check(result, clean, corrupted):
    """The recomputed baselines against the stored run's: the same weights give the same numbers."""
    for name, stored in (("clean", clean), ("corrupted", corrupted)):
        got = getattr(result, name)
        assert math.isclose(got, stored, rel_tol=1e-3, abs_tol=1e-4), (
            f"the {name} metric is {got:.6f}, the stored run's {stored:.6f}: are these the same weights?")


def show(result):
    """The result in its page's default view: a row per value of the leading axes, a column per value
    of the last; the shade grows with the distance from "no effect" (blank: none)."""
    view = analysis.read(result).view()

    def name(axis, i):
        label = result.labels[axis][i]
        return {"layer": f"L{label}", "head": f"H{label}"}.get(axis, f"{i} {label}")

    rows = [("", view.values)]
    for axis in result.axes[:-1]:
        rows = [(f"{path} {name(axis, i)}".strip(), sub) for path, values in rows for i, sub in enumerate(values)]
    reach = max(abs(v - view.no_effect) for _, values in rows for v in values) or 1.0
    width = max(len(path) for path, _ in rows)
    columns = [name(result.axes[-1], i) for i in range(len(rows[0][1]))]
    print(f"{result.id}: {view.title}")
    print(" " * width + "".join(f"{c[:9]:>9} " for c in columns))
    for path, values in rows:
        cells = "".join(f"{v:>+9.3f}{SHADES[round(abs(v - view.no_effect) / reach * (len(SHADES) - 1))]}" for v in values)
        print(f"{path:<{width}}{cells}")
'''

SETUP_NOTE = (
    "Each cell below recomputes one run of the study from its spec with `patchstudio.run`: the same spec gives "
    "the same id, which the cell asserts, and the same weights give the same clean and corrupted metric, which "
    "it checks. The tables show each result in the view its page opens in; the study's page draws them as "
    "interactive heatmaps (matplotlib and plotly are not patchstudio dependencies, so the notebook prints tables "
    "and runs wherever patchstudio does)."
)


def builtin(model_name: str) -> bool:
    """A model that ``patchstudio.load_model`` loads from the files patchstudio ships."""
    return model_name in BUILTIN_MODELS or model_name in TRACR_MODELS


def _cell(kind: str, index: int, source: str) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": kind, "id": f"{kind}-{index}", "metadata": {}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def _run_cells(number: int, stored: StoredRun, base: str) -> list[tuple[str, str]]:
    result = stored.result
    spec = result.spec
    note = (f"## {number}. {describe(result)}\n\n"
            f"Run [`{stored.id}`]({base}{urls.run_page(stored.id)}) on `{result.model.name}`, "
            f"{len(result.prompts)} prompt pair{'s' if len(result.prompts) != 1 else ''}.")
    if not builtin(spec.model):
        note += (f"\n\n**Load the model first.** `{spec.model}` is not one of the models patchstudio ships: "
                 f"`patchstudio.load_model({spec.model!r})` finds it in the Hugging Face cache (or as a directory "
                 "saved with `save_pretrained`); or set `model` to your own TransformerBridge of the same weights "
                 "in place of that line.")
    code = (export.reproduce(spec)
            + f"check(result, clean={result.clean!r}, corrupted={result.corrupted!r})\n"
            + "show(result)\n")
    return [("markdown", note), ("code", code)]


def notebook(study: StoredStudy, stored_runs: list[StoredRun], base: str) -> dict[str, Any]:
    """The study as a notebook (a dict to write as JSON); ``stored_runs`` in the study's order and
    ``base`` the server's address, for the links."""
    content = study.content
    intro = f"# {content.title}\n\n" + (f"{content.notes}\n\n" if content.notes else "")
    intro += f"---\n*Study [`{study.id}`]({base}{urls.study(study.id)}) from Patch Studio, {len(stored_runs)} runs.*"
    cells = [("markdown", intro), ("markdown", SETUP_NOTE), ("code", SETUP)]
    for number, stored in enumerate(stored_runs, 1):
        cells += _run_cells(number, stored, base)
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
            "patchstudio": {"study": study.id, "runs": [s.id for s in stored_runs]},
        },
        "cells": [_cell(kind, i, source) for i, (kind, source) in enumerate(cells)],
    }


def notebook_json(study: StoredStudy, stored_runs: list[StoredRun], base: str) -> str:
    return json.dumps(notebook(study, stored_runs, base), indent=1, ensure_ascii=False) + "\n"
