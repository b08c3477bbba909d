"""Node-level ROC AUC of activation patching against the Tracr models' ground truth, measured
here with patchstudio's own engine, and the same figures as docs/tracr-models.md prints them.

Each model: 20 pairs of its prompt family (seed 0, 5 words), activation patching of every head
and every MLP output at all positions, denoising (clean into corrupted), metric logit_diff. A
node's effect is its normalized effect (value - corrupted) / (clean - corrupted); its score is
|effect|, with an effect under 1e-4 (the engine's agreement with its references) counted as 0,
so float noise cannot break ties. AUC: the probability that a circuit node outscores a node
outside the circuit (Tracr's zero-weight padding), ties counting one half (Mann-Whitney).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import patchstudio
from patchstudio.models.tracr import TASKS, load_ground_truth
from patchstudio.models.tracr.prompts import pairs

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tracr-models.md"
N_PAIRS, SEED, NOISE = 20, 0, 1e-4


def node_effects(name: str) -> dict[str, float]:
    model = patchstudio.load_model(name)
    effects = {}
    for component in ("head", "mlp_out"):
        result = patchstudio.run({"model": name, "prompts": pairs(name, N_PAIRS, seed=SEED), "component": component,
                                  "positions": "all"}, model=model)
        values = torch.tensor(result.values).reshape(int(model.cfg.n_layers), -1)
        for layer, row in enumerate(values.tolist()):
            for h, value in enumerate(row):
                node = f"a{layer}.h{h}" if component == "head" else f"m{layer}"
                effects[node] = (value - result.corrupted) / (result.clean - result.corrupted)
    return effects


def roc_auc(scores: dict[str, float], positives: set[str]) -> float:
    pos = [s for n, s in scores.items() if n in positives]
    neg = [s for n, s in scores.items() if n not in positives]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def test_roc_auc_by_hand():
    assert roc_auc({"a": 1.0, "b": 0.0, "c": 0.0}, {"a"}) == 1.0
    assert roc_auc({"a": 0.0, "b": 0.0}, {"a"}) == 0.5
    # reverse's shape: 1 of 5 circuit nodes scores, 3 outside tie at 0: (3 + 4 * 3 / 2) / 15
    assert roc_auc({"p1": 1.0, "p2": 0, "p3": 0, "p4": 0, "p5": 0, "n1": 0, "n2": 0, "n3": 0},
                   {"p1", "p2", "p3", "p4", "p5"}) == pytest.approx(0.6)


def docs_rows() -> dict[str, list[str]]:
    """The cells of docs/tracr-models.md's table rows, by the model named in their first cell."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*`(tracr-[a-z]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows.setdefault(m.group(1), []).append([c.strip() for c in m.group(2).split("|")])
    return rows


@pytest.mark.parametrize("name", list(TASKS))
def test_auc_and_effects_are_the_docs_figures(name):
    truth = load_ground_truth(name)
    effects = node_effects(name)
    assert set(effects) == {n["name"] for n in truth["nodes"] if n["kind"] in ("head", "mlp")}
    scores = {n: abs(e) if abs(e) >= NOISE else 0.0 for n, e in effects.items()}
    auc = roc_auc(scores, set(truth["circuit_nodes"]))
    auc_row, effects_row = docs_rows()[name]
    assert auc_row[:3] == [str(len(truth["circuit_nodes"])), str(len(effects) - len(truth["circuit_nodes"])),
                           f"{auc:.3f}"]
    printed = dict(re.findall(r"`([am][0-9.h]+)` (-?[0-9.]+)", effects_row[0]))
    assert printed == {n: f"{e:.3f}" if abs(e) >= NOISE else "0" for n, e in effects.items()}
    for node in set(effects) - set(truth["circuit_nodes"]):  # zero weights: exactly no effect
        assert scores[node] == 0.0
