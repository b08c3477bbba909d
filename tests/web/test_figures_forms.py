"""Pure pieces of the web layer: figures from results, specs from forms."""

from __future__ import annotations

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio import analysis
from patchstudio.web import figures
from patchstudio.web.forms import form_from_spec, parse_pairs_text, spec_from_form
from web_helpers import IOI, IOI_CORRUPTED, form


@pytest.fixture(scope="module")
def head_result(tiny_model):
    return run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"})


def _white_at(trace) -> float:
    """The z value the colour scale draws white ("no effect")."""
    stop = next(s for s, colour in trace["colorscale"] if colour in ("#f7f7f7", "rgb(247,247,247)"))
    return trace["zmin"] + stop * (trace["zmax"] - trace["zmin"])


def test_raw_heatmap_is_centred_on_no_effect_and_hovers_like_l3_h5(head_result):
    fig = figures.heatmap(head_result, view="raw")
    trace = fig["data"][0]
    flat = [v for row in head_result.values for v in row]
    # denoising: no effect leaves the corrupted metric, drawn white; the range is the data's
    assert _white_at(trace) == pytest.approx(head_result.corrupted)
    assert trace["zmin"] == min(flat + [head_result.corrupted]) and trace["zmax"] == max(flat + [head_result.corrupted])
    value = head_result.values[1][2]
    gap = head_result.clean - head_result.corrupted
    change, share = value - head_result.corrupted, (value - head_result.corrupted) / gap
    sd, lo, hi = head_result.std[1][2], head_result.ci_low[1][2], head_result.ci_high[1][2]
    assert trace["text"][1][2] == (
        f"L1 H2: raw {value:.3f} · share {share:+.3f} · change {change:+.3f}"
        f"<br>over n = 2 prompts: sd {sd:.3f}, 95% CI {lo:.3f} to {hi:.3f} (raw units)"
    )
    assert trace["customdata"][1][2] == [1, None, 2]
    title = trace["colorbar"]["title"]["text"].replace("<br>", " ")
    assert title == f"logit diff; no effect = {head_result.corrupted:.3g} (the corrupted run)"
    assert "restoration" in fig["layout"]["title"]["text"]


def test_default_heatmap_shows_the_share_of_the_gap_restored(head_result):
    trace = figures.heatmap(head_result)["data"][0]
    gap = head_result.clean - head_result.corrupted
    assert trace["z"][1][2] == pytest.approx((head_result.values[1][2] - head_result.corrupted) / gap)
    assert _white_at(trace) == pytest.approx(0.0)
    assert trace["colorbar"]["title"]["text"].replace("<br>", " ") == (
        "share of the clean−corrupted gap restored; 0 = corrupted run, 1 = clean run"
    )
    assert trace["text"][1][2].startswith("L1 H2: share ")


def test_probability_scale_has_no_invented_extremes(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "metric": "prob"})
    trace = figures.heatmap(result, view="raw")["data"][0]
    assert 0.0 <= trace["zmin"] and trace["zmax"] <= 1.0  # a mirrored range would pass 1 or go below 0


def test_layer_bars_start_at_no_effect(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer"})
    trace = figures.heatmap(result, view="raw")["data"][0]
    assert trace["base"] == [result.corrupted] * len(result.values)
    assert [b + y for b, y in zip(trace["base"], trace["y"])] == pytest.approx(result.values)


def test_noising_and_ablation_centre_on_the_clean_run(tiny_model):
    noised = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "direction": "noise"})
    ablated = run(tiny_model, {"method": "ablation", "prompts": TINY_PAIRS, "component": "head"})
    assert analysis.no_effect(noised) == noised.clean and analysis.no_effect(ablated) == ablated.clean


def test_position_labels_are_roles_and_escaped(tiny_model):
    """By role; a token every prompt has there is shown beside its role (escaped: '<bos>' is markup)."""
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "resid_pre", "positions": "each"})
    fig = figures.heatmap(result)
    assert fig["data"][0]["x"][:3] == ["BOS (&lt;bos&gt;)", "When", "IO"]  # IO is Mary in one prompt, Alice in the other
    assert fig["data"][0]["x"][-1] == "END (to)"
    assert fig["layout"]["xaxis"]["title"]["text"] == "position (role; n = 2 prompts per cell)"
    # cells of different n (none the engine makes today) carry their own
    uneven = result.model_dump(mode="json")
    uneven["roles"][0]["n"] = 1
    fig = figures.heatmap(type(result).model_validate(uneven))
    assert fig["data"][0]["x"][:2] == ["BOS (&lt;bos&gt;), n = 1", "When, n = 2"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "position (role, n prompts)"


def test_position_labels_of_a_result_stored_by_index(tiny_model):
    """A result stored before roles (labels: prompt 1's tokens, no roles) keeps its index labels."""
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "resid_pre", "positions": "each"})
    old = result.model_dump(mode="json")
    old.update(roles=None, labels={**old["labels"], "pos": result.prompts[0].clean})
    legacy = type(result).model_validate(old)
    assert figures.heatmap(legacy)["data"][0]["x"][:3] == ["0 &lt;bos&gt;", "1 When", "2 Mary (IO)"]
    assert figures.heatmap(legacy)["layout"]["xaxis"]["title"]["text"] == "position"
    assert analysis.cell_name(legacy, 1, 10, None) == "L1 @ 10 John (S2)"


def test_per_position_head_sweep_shows_one_position(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "positions": "each"})
    fig = figures.heatmap(result, pos=10, view="raw")
    assert fig["data"][0]["z"] == [row[10] for row in result.values]
    assert "position S2" in fig["layout"]["title"]["text"]  # IOI roles (Wang et al.)
    assert fig["data"][0]["text"][1][3].startswith("L1 H3 @ S2: ")
    assert analysis.cell_value(result, 1, 10, 3) == result.values[1][10][3]
    assert analysis.cell_name(result, 1, 10, 3) == "L1 H3 @ S2"


def test_layer_component_is_a_bar_chart(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer"})
    fig = figures.heatmap(result, view="change")
    assert fig["data"][0]["type"] == "bar" and fig["data"][0]["y"] == pytest.approx([v - result.corrupted for v in result.values])


def test_figure1_and_the_verdict(head_result):
    fig = figures.figure1(head_result, "L1 H2", patched=0.5, ablated=0.1, ablation="mean")
    assert fig["data"][0]["x"] == ["clean", "corrupted", "patch clean L1 H2", "mean-ablate L1 H2"]
    assert fig["data"][0]["y"] == [head_result.clean, head_result.corrupted, 0.5, 0.1]
    gap = head_result.clean - head_result.corrupted
    text = analysis.verdict(head_result, head_result.corrupted + gap, head_result.clean, "denoise")
    assert text.startswith("Patching restores 100% of the clean–corrupted gap; ablating it removes 0%.")
    assert "redundancy or self-repair suspected" in text


def test_form_with_swap_corruption_and_guessed_answers():
    state = spec_from_form(form())
    assert state.error is None
    pair = state.spec.prompts[0]
    assert (pair.clean, pair.corrupted, pair.answer, pair.wrong) == (IOI, IOI_CORRUPTED, "Mary", "John")
    assert state.values["corrupted"] == IOI_CORRUPTED


def test_form_errors_name_the_field():
    state = spec_from_form(form(clean="   "))
    assert (state.error_field, state.error) == ("clean", "the clean prompt is empty")
    state = spec_from_form(form(source="family", family="ioi_swap", n_pairs="500"))
    assert state.error_field == "n_pairs" and "between 1 and 64" in state.error
    state = spec_from_form(form(component="neuron"))
    assert state.error_field == "component" and state.error.startswith("component:")


def test_custom_pairs_text_and_round_trip_through_a_stored_spec():
    pairs = parse_pairs_text(f"{IOI}\n\nWhen Alice and Bob went to the garden , Bob gave a book to | | Alice | Bob\n")
    assert pairs[0]["corrupted"] == IOI_CORRUPTED and pairs[0]["answer"] == "Mary"
    assert pairs[1]["corrupted"].endswith("Alice gave a book to") and pairs[1]["wrong"] == "Bob"
    state = spec_from_form(form(source="family", family="custom", pairs_text="\n".join(" | ".join(p.values()) for p in pairs)))
    assert state.error is None and len(state.spec.prompts) == 2
    again = spec_from_form(form_from_spec(state.spec))
    assert again.spec == state.spec
    single = spec_from_form(form())
    values = form_from_spec(single.spec)
    assert values["corruption"] == "swap" and values["auto_answers"] == "on"
    assert spec_from_form(values).spec == single.spec


def test_triangulation_flags_say_where_methods_disagree():
    shares = {"patching": 0.8, "ablation": 0.02, "attribution": 0.3, "path": 0.1, "direct": 0.1, "total_effect": 0.02,
              "direct_effect": 0.4}
    flags = analysis.triangulation_flags(shares)
    assert flags == [
        "Large patching effect but small ablation drop: redundancy or self-repair suspected.",
        "The linear estimate is off by 50% of the gap: attribution is unreliable here.",
        "Most of its effect goes through later components, not directly to the logits.",
        "Its direct effect is larger than its total effect: the network compensates (self-repair).",
    ]
    assert analysis.triangulation_flags({"patching": 0.6, "ablation": 0.5}) == []


def test_agreement_statistics(tiny_model):
    exact = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"})
    estimate = run(tiny_model, {"method": "attribution_patching", "prompts": TINY_PAIRS, "component": "head"})
    a = analysis.agreement(estimate, exact)
    x = [v for row in exact.values for v in row]
    y = [v for row in estimate.values for v in row]
    import numpy as np

    assert a["pearson"] == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-9)
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 - no ties here
    assert a["spearman"] == pytest.approx(float(np.corrcoef(rank(x), rank(y))[0, 1]), abs=1e-9)
    worst = max(range(len(x)), key=lambda i: abs(y[i] - x[i]))
    assert a["disagreements"][0] == (f"L{worst // 4} H{worst % 4}", x[worst], y[worst])
    assert analysis.agreement(exact, exact)["pearson"] == pytest.approx(1.0)


def test_colour_intensity_is_the_same_on_both_sides_of_no_effect():
    scale, zmin, zmax = figures.diverging(-0.1, 1.0, 0.0)
    assert (zmin, zmax) == (-0.1, 1.0)  # the data's range, not mirrored to -1
    assert scale[0] == [0.0, figures._ramp(figures._REDS, 0.1)]  # a small negative stays pale
    assert scale[-1] == [1.0, figures._ramp(figures._BLUES, 1.0)]
    assert scale[0][1] != figures._ramp(figures._REDS, 1.0)


def test_ioi_positions_are_named_by_role(tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "resid_pre", "positions": "each"})
    roles = analysis.position_roles(result)
    tokens = result.prompts[0].clean
    named = {r: [tokens[i] for i in where[0]] for r, where in ((role.role, role.at) for role in result.roles)}
    assert [named[r] for r in ("IO", "S1", "S2", "END")] == [["Mary"], ["John"], ["John"], ["to"]]
    assert [roles.index(r) for r in ("IO", "S1", "S2", "END")] == [2, 4, 10, 14]
    assert figures.heatmap(result)["data"][0]["x"][10] == "S2"  # John in one prompt, Bob in the other
    # a prompt without the IOI shape (three names, each once) gets no IOI roles: its words, the changed token, END
    other = run(tiny_model, {"prompts": [{"clean": "When Mary and Alice went to the store , John gave a drink to",
                                          "corrupted": "When Mary and Alice went to the store , Bob gave a drink to",
                                          "answer": "Mary", "wrong": "John"}], "component": "resid_pre", "positions": "each"})
    assert analysis.position_roles(other)[1:6] == ["When", "Mary", "and", "Alice", "went"]
    assert analysis.position_roles(other)[10] == "diff1" and "S2" not in analysis.position_roles(other)
