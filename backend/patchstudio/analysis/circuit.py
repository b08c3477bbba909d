"""Reading a circuit result: each edge's estimated change, estimate vs exact, faithfulness in words,
and agreement with a known circuit (ROC AUC against a ground truth). Pure.

A circuit result's cells are edges (``engine.methods.circuit``): the estimated metric after
patching each edge alone. Its ``extras`` hold the graph, the ranking, the exact values of the
top-k edges and the faithfulness curve. Everything here reads those; nothing computes a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from patchstudio.analysis.views import Reading, pearson, ranks, read
from patchstudio.results import PatchResult

NOISE = 1e-4  # |change| under this counts as no effect when ranking against a ground truth (float noise)


@dataclass(frozen=True)
class Agreement:
    """Estimate against exact edge patching over the verified edges, as changes from "no effect"."""

    names: list[str]
    exact: list[float]
    estimate: list[float]
    pearson: float
    spearman: float
    disagreements: list[tuple[str, float, float]]  # (edge, exact, estimate), largest |difference| first

    def as_dict(self) -> dict[str, Any]:
        return {"names": self.names, "exact": self.exact, "estimate": self.estimate, "pearson": self.pearson,
                "spearman": self.spearman, "disagreements": self.disagreements}


def edge_changes(result: PatchResult | Reading) -> list[float]:
    """Each edge's mean estimated change of the metric from the unpatched base run."""
    return list(read(result).view("change").values)


def agreement(result: PatchResult | Reading, top: int = 5) -> Agreement | None:
    """How well the estimates track exact patching on the verified edges (None: none verified)."""
    reading = read(result)
    result = reading.result
    exact = (result.extras or {}).get("exact")
    if not exact or not exact["edges"]:
        return None
    changes = edge_changes(reading)
    names = [result.labels["edge"][e] for e in exact["edges"]]
    x = [v - reading.no_effect for v in exact["values"]]
    y = [changes[e] for e in exact["edges"]]
    worst = sorted(range(len(x)), key=lambda i: -abs(y[i] - x[i]))[:top]
    return Agreement(names, x, y, pearson(x, y), pearson(ranks(x), ranks(y)), [(names[i], x[i], y[i]) for i in worst])


def faithfulness(result: PatchResult) -> dict[str, Any] | None:
    return (result.extras or {}).get("faithfulness")


def roc_auc(scores: Mapping[str, float], positives: Iterable[str]) -> float:
    """The probability that a positive outscores a negative, ties counting one half (Mann-Whitney)."""
    positives = set(positives)
    pos = sorted(s for n, s in scores.items() if n in positives)
    neg = sorted(s for n, s in scores.items() if n not in positives)
    if not pos or not neg:
        return float("nan")
    wins, i, j = 0.0, 0, 0
    for p in pos:  # one sweep over both sorted lists: negatives below p, and ties
        while i < len(neg) and neg[i] < p:
            i += 1
        j = max(j, i)
        while j < len(neg) and neg[j] == p:
            j += 1
        wins += i + (j - i) / 2
    return wins / (len(pos) * len(neg))


def edge_truth(truth: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(the ground truth's edges a patch between two prompts can show, its constant edges: they
    carry only a direction every input has, so no such patch moves them; they are left out of
    both sides of an AUC)."""
    edges = truth["edges"]
    return {e["name"] for e in edges if not e.get("constant")}, {e["name"] for e in edges if e.get("constant")}


def scores_auc(names: list[str], changes: list[float], truth: Mapping[str, Any]) -> float:
    """ROC AUC of |change| (under ``NOISE``: 0) against a ground truth's edges, constant ones left out."""
    positives, constant = edge_truth(truth)
    scores = {n: (abs(c) if abs(c) >= NOISE else 0.0) for n, c in zip(names, changes) if n not in constant}
    return roc_auc(scores, positives)


def ground_truth_auc(result: PatchResult | Reading, truth: Mapping[str, Any]) -> dict[str, Any]:
    """This run's edge-level ROC AUC against ``truth`` (a Tracr model's ``ground_truth.json``): of its
    estimates, and of exact patching when every edge was verified."""
    reading = read(result)
    result = reading.result
    names = result.labels["edge"]
    positives, constant = edge_truth(truth)
    out: dict[str, Any] = {"estimate": scores_auc(names, edge_changes(reading), truth), "exact": None,
                           "positives": len(positives), "negatives": len(names) - len(positives) - len(constant),
                           "constant": sorted(constant)}
    exact = (result.extras or {}).get("exact")
    if exact and len(exact["edges"]) == len(names):
        by_edge = dict(zip(exact["edges"], exact["values"]))
        out["exact"] = scores_auc(names, [by_edge[e] - reading.no_effect for e in range(len(names))], truth)
    return out


def node_cell(name: str) -> tuple[str, int, int | None] | None:
    """A graph node's cell in the node heatmaps: ('head', layer, head), ('mlp_out', layer, None);
    None for the input and the logits, which have none."""
    if name.startswith("a") and ".h" in name:
        layer, head = name[1:].split(".h")
        return "head", int(layer), int(head)
    if name.startswith("m") and name[1:].isdigit():
        return "mlp_out", int(name[1:]), None
    return None


def eap_ig_graph(result: PatchResult | Reading, n: int) -> dict[str, Any]:
    """The circuit of the top ``n`` edges in the EAP-IG code's ``Graph`` JSON layout (``Graph.to_json`` /
    ``from_json``, which the MIB circuit track's evaluation reads): ``cfg`` (n_layers, n_heads,
    parallel_attn_mlp, d_model), ``nodes`` ({name: {in_graph}}) and ``edges`` ({name: {score,
    in_graph}}), each edge's score its mean estimated change. Under grouped-query attention that
    code names a key or value input per query head: each query head of a group gets its group's
    edge, score and membership."""
    reading = read(result)
    result = reading.result
    graph = (result.extras or {})["graph"]
    senders, receivers = graph["senders"], graph["receivers"]
    changes = edge_changes(reading)
    kept = set((result.extras or {})["ranking"][: max(0, n)])
    edges: dict[str, dict[str, Any]] = {}
    touched: set[str] = {"logits"}
    for e, (s, r) in enumerate(graph["edges"]):
        rec, sender = receivers[r], senders[s]["name"]
        if rec["input"] in ("k", "v"):
            names = [f"{sender}->a{rec['layer']}.h{h}<{rec['input']}>" for h in rec["heads"]]
        else:
            names = [f"{sender}->{rec['name']}"]
        for name in names:
            edges[name] = {"score": changes[e], "in_graph": e in kept}
            if e in kept:
                touched.update({sender, name.split("->")[1].split("<")[0]})
    nodes = {node["name"]: {"in_graph": node["name"] in touched} for node in senders}
    nodes["logits"] = {"in_graph": True}
    cfg = {"n_layers": graph["n_layers"], "n_heads": graph["n_heads"], "parallel_attn_mlp": graph["parallel_attn_mlp"],
           "d_model": graph["d_model"]}
    return {"cfg": cfg, "nodes": nodes, "edges": edges}
