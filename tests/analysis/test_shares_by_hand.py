"""The shares a user reads, against hand formulas: noising and ablation count what they destroy
(positive towards the corrupted run, whichever way the gap points), and the triangulation table's
rows read restoration from the corrupted run, so a head that does nothing reads 0 and raises no flag.

Results here are real runs of the tiny model whose cells are then set to chosen values (clean,
corrupted, a quarter of the way, past the clean run), so the expected share of every cell is known
before any code under test runs."""

from __future__ import annotations

import pytest

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run
from patchstudio.specs import parse_spec

HEADS = {"prompts": TINY_PAIRS, "component": "head"}
LAYER, HEAD = 1, 2
# where a cell sits between the intervened run (0) and the other run (1): the expected share
STEPS = [0.0, 1.0, 0.25, -0.5]


def flat(values):
    return [v for row in values for v in row]


def _set(result, values, *, clean=None, corrupted=None):
    """The result with these cell values (per prompt too: two identical prompts) and run metrics."""
    update = {"values": values, "per_prompt": [values] * len(result.prompts), "ci_low": values, "ci_high": values}
    if clean is not None:
        update.update(clean=clean, corrupted=corrupted)
    return result.model_copy(update=update)


def _cells(start: float, end: float, n_layers: int, n_heads: int):
    """Rows of cells at STEPS between ``start`` (share 0) and ``end`` (share 1), and those shares."""
    assert n_heads == len(STEPS)
    return [[start + t * (end - start) for t in STEPS] for _ in range(n_layers)], [list(STEPS) for _ in range(n_layers)]


@pytest.fixture(scope="module")
def runs(tiny_model):
    return {
        "denoise": run(tiny_model, HEADS),
        "noise": run(tiny_model, {**HEADS, "direction": "noise"}),
        "ablation": run(tiny_model, {**HEADS, "method": "ablation"}),
    }


@pytest.mark.parametrize("flip", [False, True], ids=["gap as run", "gap reversed"])
@pytest.mark.parametrize("kind", ["noise", "ablation", "denoise"])
def test_every_view_of_a_cell_by_hand(runs, kind, flip):
    """Noising and ablation: share = (clean − v) / (clean − corrupted), 1 when the cell reaches the
    corrupted run; denoising: (v − corrupted) / (clean − corrupted). Change = v − "no effect"."""
    real = runs[kind]
    clean, corrupted = (real.corrupted, real.clean) if flip else (real.clean, real.corrupted)
    base, other = (corrupted, clean) if kind == "denoise" else (clean, corrupted)
    n_layers, n_heads = len(real.values), len(real.values[0])
    values, shares = _cells(base, other, n_layers, n_heads)
    result = _set(real, values, clean=clean, corrupted=corrupted)
    r = analysis.read(result)
    assert r.no_effect == base
    assert r.view("raw").no_effect == base and r.view("raw").values == values
    assert flat(r.view("change").values) == pytest.approx([v - base for v in flat(values)])
    assert flat(r.view("share").values) == pytest.approx(flat(shares))
    # the strip under the heatmap and its interval read in the same units
    strip = r.cell_prompts("share", LAYER, None, HEAD)
    assert strip.values == pytest.approx([shares[LAYER][HEAD]] * len(real.prompts))
    assert (strip.mean, strip.ci_low, strip.ci_high) == pytest.approx((shares[LAYER][HEAD],) * 3)


@pytest.mark.parametrize("kind", ["noise", "ablation"])
def test_destroying_shares_on_the_real_run(runs, kind):
    result = runs[kind]
    clean, corrupted = result.clean, result.corrupted
    expected = [(clean - v) / (clean - corrupted) for v in flat(result.values)]
    assert flat(analysis.read(result).view("share").values) == pytest.approx(expected)


# --- the triangulation table ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["denoise", "noise"])
def companions(request, tiny_model):
    spec = parse_spec({**HEADS, "direction": request.param})
    specs = analysis.triangulation_specs(spec, layer=LAYER, head=HEAD)
    assert set(specs) == {"patching", "ablation", "attribution", "path", "direct", "repair"}
    return request.param, {key: run(tiny_model, s) for key, s in specs.items()}


def _cell(result):
    return result.values[LAYER][HEAD]


def test_triangulation_rows_by_hand(companions):
    direction, runs = companions
    page = runs["patching"]
    clean, corrupted = page.clean, page.corrupted
    g = clean - corrupted
    moved = (lambda v: (v - corrupted) / g) if direction == "denoise" else (lambda v: (clean - v) / g)
    expected = {
        "patching": moved(_cell(runs["patching"])),
        "ablation": (clean - _cell(runs["ablation"])) / g,
        "attribution": moved(_cell(runs["attribution"])),
        "path": moved(_cell(runs["path"])),
        "direct": moved(_cell(runs["direct"])),
        "total_effect": -runs["repair"].extras["total_effect"] / g,  # a drop counts positive
        "direct_effect": -runs["repair"].extras["direct_effect"] / g,
    }
    table = analysis.triangulate(page, runs, LAYER, None, HEAD)
    assert {row["key"]: row["share"] for row in table.rows} == pytest.approx(expected)


def test_a_head_that_does_nothing_reads_zero_everywhere_and_raises_no_flag(companions):
    """Every row at its run's "no effect": a restoration row at the corrupted run (denoising) or the
    clean run (noising), the ablation at the clean run, TE = DE = 0."""
    direction, real = companions
    page = real["patching"]
    base = page.corrupted if direction == "denoise" else page.clean
    null = {}
    for key, result in real.items():
        if key == "repair":
            null[key] = result.model_copy(update={"extras": {**result.extras, "total_effect": 0.0, "direct_effect": 0.0}})
            continue
        at = page.clean if key == "ablation" else base
        null[key] = _set(result, [[at] * len(row) for row in result.values])
    table = analysis.triangulate(page, null, LAYER, None, HEAD)
    assert {row["key"]: row["share"] for row in table.rows} == pytest.approx(dict.fromkeys([r["key"] for r in table.rows], 0.0))
    assert table.flags == []


def test_a_head_that_restores_without_ablation_cost_raises_the_redundancy_flag(companions):
    """Patching moves 60% of the gap, ablation removes nothing: the table says redundancy."""
    direction, real = companions
    page = real["patching"]
    g = page.clean - page.corrupted
    patched = page.corrupted + 0.6 * g if direction == "denoise" else page.clean - 0.6 * g
    runs = {key: real[key] for key in ("patching", "ablation")}
    runs["patching"] = _set(real["patching"], [[patched] * len(row) for row in page.values])
    runs["ablation"] = _set(real["ablation"], [[page.clean] * len(row) for row in page.values])
    table = analysis.triangulate(page, runs, LAYER, None, HEAD)
    assert [(row["key"], row["share"]) for row in table.rows] == [("patching", pytest.approx(0.6)), ("ablation", 0.0)]
    assert table.flags == ["Large patching effect but small ablation drop: redundancy or self-repair suspected."]
