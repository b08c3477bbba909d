"""Edge-level ROC AUC of EAP, EAP-IG and exact edge patching against the Tracr models' ground
truth, measured here with patchstudio's own engine, and the same figures as docs/tracr-models.md
prints them (its "Edge level" table).

Each model: the node-level table's 20 pairs (seed 0, 5 words), denoising (clean into corrupted),
metric logit_diff; the circuit method with EAP (1 step) and every edge verified exactly, and with
EAP-IG (5 steps). An edge's score is |its mean change from the corrupted run|, a change under 1e-4
counted as 0. Positives: the ground truth's edges but its constant ones (they carry only Tracr's
`one` direction, the same in every prompt, so no patch between two prompts moves them; they are
left out of both sides); negatives: every other edge of the graph. AUC computed here pair by pair,
ties one half, and checked against the page's (analysis.circuit.ground_truth_auc).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import patchstudio
from patchstudio.analysis import circuit as C
from patchstudio.models.tracr import TASKS, load_ground_truth
from patchstudio.models.tracr.prompts import pairs

pytestmark = pytest.mark.usefixtures("one_thread")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "tracr-models.md"
N_PAIRS, SEED, NOISE, IG_STEPS = 20, 0, 1e-4, 5


def pairwise_auc(scores: dict[str, float], positives: set[str]) -> float:
    pos = [s for n, s in scores.items() if n in positives]
    neg = [s for n, s in scores.items() if n not in positives]
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def edge_rows() -> dict[str, list[str]]:
    """The cells of the docs' edge-level table, by model."""
    text = DOCS.read_text()
    section = text.split("### Edge level", 1)[1].split("\n#", 1)[0]
    return {m.group(1): [c.strip() for c in m.group(2).split("|")]
            for m in re.finditer(r"^\|\s*(tracr-[a-z]+)\s*\|(.*)\|\s*$", section, re.M)}


@pytest.mark.parametrize("name", list(TASKS))
def test_edge_auc_is_the_docs_figures(name):
    model = patchstudio.load_model(name)
    truth = load_ground_truth(name)
    prompts = pairs(name, N_PAIRS, seed=SEED)
    spec = {"model": name, "prompts": prompts, "method": "circuit", "direction": "denoise", "metric": "logit_diff"}
    eap = patchstudio.run({**spec, "steps": 1, "top_k": 1000}, model=model)
    ig = patchstudio.run({**spec, "steps": IG_STEPS, "top_k": 0}, model=model)
    names = eap.labels["edge"]
    assert len(eap.extras["exact"]["edges"]) == len(names)  # every edge verified
    constant = {e["name"] for e in truth["edges"] if e["constant"]}
    positives = {e["name"] for e in truth["edges"] if not e["constant"]}
    assert positives <= set(names) and constant <= set(names)

    def auc(values: list[float]) -> float:
        scores = {n: abs(v - eap.corrupted) if abs(v - eap.corrupted) >= NOISE else 0.0
                  for n, v in zip(names, values) if n not in constant}
        return pairwise_auc(scores, positives)

    exact = dict(zip(eap.extras["exact"]["edges"], eap.extras["exact"]["values"]))
    got = {"eap": auc(eap.values), "ig": auc(ig.values), "exact": auc([exact[i] for i in range(len(names))])}
    # the page's figures are the same
    page = C.ground_truth_auc(eap, truth)
    assert (page["estimate"], page["exact"]) == pytest.approx((got["eap"], got["exact"]))
    assert C.ground_truth_auc(ig, truth)["estimate"] == pytest.approx(got["ig"])
    row = edge_rows()[name]
    assert row[:6] == [str(len(positives)), str(len(names) - len(positives) - len(constant)), str(len(constant)),
                       f"{got['eap']:.3f}", f"{got['ig']:.3f}", f"{got['exact']:.3f}"]
