"""A study as a Jupyter notebook (nbformat 4.5): the title and notes as a Markdown cell, a setup cell,
then per run its claim (a Markdown cell) and a code cell that recomputes it with ``patchstudio.run``
from its spec, asserts the same id and the same baselines, and draws it.

The drawing is a heatmap in the run's default view (the view its page opens in), as an SVG the setup
cell writes itself (blue above "no effect", red below, each cell's value in its tooltip) and the kernel
displays, with the same numbers printed as a table: matplotlib and plotly are not patchstudio
dependencies, so the notebook runs wherever patchstudio does, headless in CI included (``jupyter
execute``). Outside a kernel only the table prints. The study's page draws the interactive heatmaps;
the notebook links to it.
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
from html import escape

import patchstudio
from patchstudio import analysis

SHADES = " ░▒▓█"


def check(result, clean, corrupted):
    """The recomputed baselines against the stored run's: the same weights give the same numbers."""
    for name, stored in (("clean", clean), ("corrupted", corrupted)):
        got = getattr(result, name)
        assert math.isclose(got, stored, rel_tol=1e-3, abs_tol=1e-4), (
            f"the {name} metric is {got:.6f}, the stored run's {stored:.6f}: are these the same weights?")


def grid(result, view):
    """A row per value of the leading axes, a column per value of the last: ([(row name, values)],
    [column names]) and the largest distance from "no effect"."""

    def name(axis, i):
        label = result.labels[axis][i]
        return {"layer": f"L{label}", "head": f"H{label}"}.get(axis, f"{i} {label}")

    rows = [("", view.values)]
    for axis in result.axes[:-1]:
        rows = [(f"{path} {name(axis, i)}".strip(), sub) for path, values in rows for i, sub in enumerate(values)]
    columns = [name(result.axes[-1], i) for i in range(len(rows[0][1]))]
    return rows, columns, max(abs(v - view.no_effect) for _, values in rows for v in values) or 1.0


def colour(v, base, reach):
    """Blue above "no effect", red below, white at it (the page's diverging scale)."""
    t = min(abs(v - base) / reach, 1.0)
    far = (33, 102, 172) if v >= base else (178, 24, 43)
    r, g, b = (round(247 + (c - 247) * t) for c in far)
    return f"rgb({r},{g},{b})"


def figure(result):
    """The result as an SVG heatmap in its page's default view; each cell's value in its tooltip."""
    view = analysis.read(result).view()
    rows, columns, reach = grid(result, view)
    cw, ch, top = 46, 20, 40
    left = 7 * max(len(path) for path, _ in rows) + 12
    title = f"{result.id}: {view.title}"
    width, height = max(left + cw * len(columns) + 10, 6 * len(title) + 10), top + ch * len(rows) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><text x="4" y="14" font-size="12">{escape(title)}</text>']
    out += [f'<text x="{left + cw * j + cw // 2}" y="{top - 6}" text-anchor="middle">{escape(c[:8])}</text>'
            for j, c in enumerate(columns)]
    for i, (path, values) in enumerate(rows):
        y = top + ch * i
        out.append(f'<text x="{left - 4}" y="{y + 14}" text-anchor="end">{escape(path)}</text>')
        out += [f'<rect x="{left + cw * j}" y="{y}" width="{cw - 1}" height="{ch - 1}" '
                f'fill="{colour(v, view.no_effect, reach)}"><title>{escape(f"{path} {columns[j]}".strip())}: '
                f'{v:+.4f}</title></rect>' for j, v in enumerate(values)]
    return "".join(out) + "</svg>"


def show(result):
    """The result in its page's default view: drawn as a heatmap (in a kernel), and printed as a table
    whose shade grows with the distance from "no effect" (blank: none)."""
    view = analysis.read(result).view()
    rows, columns, reach = grid(result, view)
    width = max(len(path) for path, _ in rows)
    print(f"{result.id}: {view.title}")
    print(" " * width + "".join(f"{c[:9]:>9} " for c in columns))
    for path, values in rows:
        cells = "".join(f"{v:>+9.3f}{SHADES[round(abs(v - view.no_effect) / reach * (len(SHADES) - 1))]}" for v in values)
        print(f"{path:<{width}}{cells}")
    try:
        from IPython import get_ipython
        from IPython.display import SVG, display
    except ImportError:  # plain Python: the table is the drawing
        return
    if get_ipython() is not None:
        display(SVG(figure(result)))
'''

SETUP_NOTE = (
    "Each cell below recomputes one run of the study from its spec with `patchstudio.run`: the same spec gives "
    "the same id, which the cell asserts, and the same weights give the same clean and corrupted metric, which "
    "it checks. Each result is drawn as a heatmap in the view its page opens in (blue above no effect, red below; "
    "hover a cell for its value) and printed as a table; the study's page draws them as interactive heatmaps. "
    "The heatmaps are SVG written by the setup cell (matplotlib and plotly are not patchstudio dependencies, so "
    "the notebook runs wherever patchstudio does)."
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
