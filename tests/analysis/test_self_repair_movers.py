"""Self-repair's movers (both ways, MLPs included) and headline intervals, from hand formulas on the
engine's per-prompt numbers: shares of |DE|, the floor, the delta-method interval of a share."""

from __future__ import annotations

import math

import pytest

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run
from patchstudio.engine.stats import t_quantile

PAIRS = TINY_PAIRS + [
    {"clean": "When Tom and Anna went to the school , Anna gave a ring to",
     "corrupted": "When Tom and Anna went to the school , Tom gave a ring to", "answer": "Tom", "wrong": "Anna"},
    {"clean": "When John and Alice went to the garden , Alice gave a drink to",
     "corrupted": "When John and Alice went to the garden , John gave a drink to", "answer": "John", "wrong": "Alice"},
]


@pytest.fixture(scope="module")
def result(tiny_model):
    return run(tiny_model, {"method": "self_repair", "ablation": "zero", "prompts": PAIRS, "targets": [{"layer": 0, "head": 1}]})


def _hand_changes(result):
    """name -> (mean change, its per-prompt values), heads then MLPs, the target left out."""
    out = {}
    n_layers, n_heads = len(result.values), len(result.values[0])
    for l in range(n_layers):
        for h in range(n_heads):
            if (l, h) != (0, 1):
                rows = [p[l][h] for p in result.per_prompt]
                out[f"L{l}H{h}"] = (sum(rows) / len(rows), rows)
    for l in range(n_layers):
        rows = [p[l] for p in result.extras["per_prompt"]["mlp_delta"]]
        out[f"MLP{l}"] = (sum(rows) / len(rows), rows)
    return out


def _t_half(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.975, n - 1) * sd / math.sqrt(n)


def test_movers_go_both_ways_with_shares_of_de_and_a_floor(result):
    de = result.extras["direct_effect"]
    away = 1.0 if de < 0 else -1.0
    hand = {name: away * mean / abs(de) for name, (mean, _) in _hand_changes(result).items()}
    listed = analysis.movers(result, n=100)
    # every component at or over the floor is listed, none under it, with its signed share
    assert {m.name for m in listed} == {name for name, s in hand.items() if abs(s) >= analysis.MOVER_FLOOR}
    for m in listed:
        assert m.share == pytest.approx(hand[m.name], abs=1e-6)
        assert m.word == ("compensation" if hand[m.name] > 0 else "amplification")
        assert (m.head is None) == m.name.startswith("MLP")
    assert any(m.name.startswith("MLP") for m in listed)
    signs = [m.share > 0 for m in listed]
    assert signs == sorted(signs, reverse=True)  # compensators first, then amplifiers
    assert analysis.top_compensators(result, n=100) == [m for m in listed if m.share > 0]
    # a floor above every share lists nothing (no pair-ablate button for a component at ~0%)
    assert analysis.movers(result, floor=max(abs(s) for s in hand.values()) + 1e-6) == []


def test_a_movers_intervals_hold_the_hand_student_t_interval(result):
    """The change's interval holds the Student t interval of its per-prompt values; the share's
    holds the t interval of the delta method's linearised values r + (x_i - r y_i) / mean(y)."""
    de_rows = result.extras["per_prompt"]["direct_effect"]
    de = sum(de_rows) / len(de_rows)
    away = 1.0 if de < 0 else -1.0
    hand = _hand_changes(result)
    for m in analysis.movers(result, n=100, floor=0.0):
        mean, rows = hand[m.name]
        centre, half = _t_half(rows)
        assert m.change_ci[0] <= centre - half + 1e-9 and m.change_ci[1] >= centre + half - 1e-9
        y = [-away * d for d in de_rows]
        x = [away * c for c in rows]
        r = sum(x) / sum(y)
        centre, half = _t_half([r + (xi - r * yi) / (sum(y) / len(y)) for xi, yi in zip(x, y)])
        assert centre == pytest.approx(m.share, abs=1e-6)
        assert m.share_ci[0] <= centre - half + 1e-9 and m.share_ci[1] >= centre + half - 1e-9


def test_the_reading_names_te_minus_de_and_carries_intervals(result):
    r = analysis.repair_reading(result)
    assert r["response_label"] == ("the rest of the network's response: all the targets' indirect effects plus any "
                                   "reactive repair")
    per = result.extras["per_prompt"]
    for key, rows in (("total_effect", per["total_effect"]), ("direct_effect", per["direct_effect"]),
                      ("response", per["self_repair"]),
                      ("components", [a - b for a, b in zip(per["self_repair"], per["ln_scale_part"])]),
                      ("other_heads", [a - b - sum(m) for a, b, m in zip(per["self_repair"], per["ln_scale_part"], per["mlp_delta"])])):
        centre, half = _t_half(rows)
        low, high = r[f"{key}_ci"]
        assert centre == pytest.approx(r[key], abs=1e-6), key
        assert low <= centre - half + 1e-9 and high >= centre + half - 1e-9, key
    assert [name for name, _, _ in r["mlps"]] == ["MLP0", "MLP1"]
    assert r["n"] == len(PAIRS)
