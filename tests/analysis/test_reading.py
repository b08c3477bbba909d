"""analysis.read: one Reading per result, its views against hand formulas, the views a page offers,
and the Figure 1 verdict saying what the triangulation flags say."""

from __future__ import annotations

import itertools

import pytest

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run

HEADS = {"prompts": TINY_PAIRS, "component": "head"}


def flat(values):
    return [v for row in values for v in row] if isinstance(values[0], list) else list(values)


@pytest.fixture(scope="module")
def denoised(tiny_model):
    return run(tiny_model, HEADS)


@pytest.fixture(scope="module")
def noised(tiny_model):
    return run(tiny_model, {**HEADS, "direction": "noise"})


def test_denoising_views_by_hand(denoised):
    r = analysis.read(denoised)
    clean, corrupted = denoised.clean, denoised.corrupted
    raw = flat(denoised.values)
    assert r.no_effect == corrupted and r.base_run == "corrupted" and r.gap == pytest.approx(clean - corrupted)
    assert flat(r.view("raw").values) == raw
    assert flat(r.view("change").values) == pytest.approx([v - corrupted for v in raw])
    assert flat(r.view("share").values) == pytest.approx([(v - corrupted) / (clean - corrupted) for v in raw])
    assert r.view().name == "share" and r.offered == ["share", "change", "raw"]
    assert r.evidence.startswith("restoration")
    assert r.metric_label == "logit(answer) − logit(wrong)" and r.unit == "logit diff"


def test_noising_share_counts_what_was_destroyed(noised):
    r = analysis.read(noised)
    clean, corrupted = noised.clean, noised.corrupted
    assert r.no_effect == clean and r.base_run == "clean"
    assert flat(r.view("share").values) == pytest.approx([(v - clean) / (corrupted - clean) for v in flat(noised.values)])
    assert r.view("share").title.startswith("share of the clean−corrupted gap destroyed")


def test_change_valued_methods_offer_no_raw_view(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "method": "input_influence"})
    r = analysis.read(result)
    assert r.changes and r.no_effect == 0.0 and r.base_run is None
    assert r.offered == ["share", "change"]  # raw would repeat the change
    g = result.clean - result.corrupted
    assert flat(r.view("share").values) == pytest.approx([v / g for v in flat(result.values)])


def test_without_a_gap_share_is_replaced_by_change_with_a_note(tiny_model):
    same = [{**TINY_PAIRS[0], "corrupted": TINY_PAIRS[0]["clean"]}]
    result = run(tiny_model, {"prompts": same, "component": "head"})
    r = analysis.read(result)
    assert r.gap == 0.0 and not r.share_defined
    shown = r.view("share")
    assert shown.name == "change" and "undefined" in shown.note
    assert r.default_view == "change" and r.offered == ["change", "raw"]
    assert r.all_views()["share"] is None and r.all_views()["change"]["values"] == shown.values


def test_read_asks_the_registry_once_and_a_reading_is_read_as_it_is(denoised, monkeypatch):
    from patchstudio.analysis import views

    calls = []
    original = views.get_method
    monkeypatch.setattr(views, "get_method", lambda name: calls.append(name) or original(name))
    r = analysis.read(denoised)
    r.view("raw"), r.view("share"), r.all_views(), r.offered, r.default_pos if "pos" in denoised.axes else None
    r.strongest_cell(), r.cell_prompts(None, 1, None, 2)
    assert calls == ["activation_patching"]
    assert analysis.read(r) is r


def test_the_notebook_functions_read_like_the_reading(denoised):
    r = analysis.read(denoised)
    assert analysis.view(denoised, "change").values == r.view("change").values
    assert analysis.no_effect(denoised) == r.no_effect and analysis.evidence(denoised) == r.evidence
    assert analysis.all_views(denoised) == r.all_views()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_verdict_says_what_the_flags_say(denoised, direction):
    """Over a grid of patched and ablated values, the verdict's reading after its first sentence is
    exactly the flags the same two shares raise in the triangulation table."""
    clean, corrupted = denoised.clean, denoised.corrupted
    g = clean - corrupted
    for restored, dropped in itertools.product([-0.5, 0.0, 0.05, 0.2, 0.35, 1.0], repeat=2):
        patched = corrupted + restored * g if direction == "denoise" else clean - restored * g
        ablated = clean - dropped * g
        text = analysis.verdict(denoised, patched, ablated, direction)
        first, _, rest = text.partition(". ")
        part = "restores" if direction == "denoise" else "breaks"
        assert first.rstrip(".") == f"Patching {part} {round(100 * restored)}% of the clean–corrupted gap; ablating it removes {round(100 * dropped)}%"
        flags = analysis.triangulation_flags({"patching": restored, "ablation": dropped})
        assert rest == " ".join(flags)
        if abs(restored) > 0.3 and abs(dropped) < 0.1:
            assert rest == "Large patching effect but small ablation drop: redundancy or self-repair suspected."
        elif abs(dropped) > 0.3 and abs(restored) < 0.1:
            assert rest == "Ablation hurts but patching alone does not restore: necessary, not sufficient."
        else:
            assert rest == ""
