"""Circuits and edges against the plain-hook reference (tests/circuit_references.py), to 1e-4.

EAP scores equal autograd's derivative of the metric along each edge's patch; EAP-IG equals the
midpoint Riemann sum of the same derivative along the input path; exact edge patching and every
circuit of the faithfulness ladder equal full forward passes in which carrier rows feed each
receiver its own input. On the tiny native model and three architecture families: GPT-2 (LayerNorm,
learned positions), Pythia/GPT-NeoX (parallel attention and MLP, rotary) and Llama (RMSNorm,
rotary, grouped-query attention).
"""

from __future__ import annotations

import pytest
import torch

import circuit_references as C
import references as R
from family_models import PAIRS
from helpers import TINY_PAIRS, build_tiny_model
from patchstudio.engine.edge_graph import Graph
from patchstudio.engine.methods.circuit import FRACTIONS, areas, ladder
from patchstudio.engine.run import run
from patchstudio.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
FAMILIES = ("gpt2", "neox", "llama")


@pytest.fixture(scope="module")
def small_model(tiny_tokenizer):
    """The tiny native model with LayerNorm weights and biases and an unembedding bias (2 layers:
    the reference runs one full pass per edge)."""
    return build_tiny_model(tiny_tokenizer, n_layers=2, perturb=True, seed=3)


@pytest.fixture(scope="module", params=("tiny", *FAMILIES))
def case(request, small_model, family_models):
    """(name, model, prompt pairs as dicts, the reference's pairs)."""
    if request.param == "tiny":
        model, prompts = small_model, TINY_PAIRS
    else:
        model, prompts = family_models(request.param), PAIRS
    return request.param, model, prompts, R.pairs_of(model, prompts)


def _runs(pair, direction):
    return (pair.clean, pair.corrupted) if direction == "noise" else (pair.corrupted, pair.clean)


def _deltas(model, base, source):
    a, b = C.sender_outputs(model, base), C.sender_outputs(model, source)
    return {s: b[s] - a[s] for s in a}


def _base_metric(model, tokens, pair):
    with torch.no_grad():
        return float(C.logit_diff(model(tokens)[0, -1], pair.answer[0], pair.wrong[0]))


# --- the graph ------------------------------------------------------------------------------------------


def test_gpt2_small_has_the_mib_edge_count():
    """MIB's circuit track counts 32,491 edges in GPT-2 small's graph (its evaluation's EDGE_COUNTS)."""
    assert len(Graph(12, 12, 12, False, 768).edges) == 32491


def test_senders_of_an_mlp_depend_on_the_block():
    sequential, parallel = Graph(2, 2, 2, False, 8), Graph(2, 2, 2, True, 8)
    into_m1 = lambda g: sorted(n.split("->")[0] for n in g.names if n.endswith("->m1"))  # noqa: E731
    assert into_m1(sequential) == ["a0.h0", "a0.h1", "a1.h0", "a1.h1", "input", "m0"]
    assert into_m1(parallel) == ["a0.h0", "a0.h1", "input", "m0"]  # the MLP reads the block's input
    assert "a1.h0->a1.h1<q>" not in sequential.index and "m1->logits" in sequential.index


def test_grouped_query_attention_names_key_value_heads():
    g = Graph(2, 4, 2, False, 8)
    assert [r.name for r in g.receivers[:9]] == [
        "a0.h0<q>", "a0.h1<q>", "a0.h2<q>", "a0.h3<q>", "a0.kv0<k>", "a0.kv1<k>", "a0.kv0<v>", "a0.kv1<v>", "m0"]
    assert g.receivers[5].heads == (2, 3)
    with pytest.raises(InputError, match="a0.h9") as info:
        g.edge("input->a0.h9<q>")
    assert info.value.field == "edges"


def test_gemma2_is_refused(family_models):
    """Gemma 2 normalises the attention output before the residual stream: no edge carries one head."""
    model = family_models("gemma2")
    with pytest.raises(InputError, match="circuits are not defined on this model") as info:
        run(model, {"method": "circuit", "prompts": PAIRS[:1]})
    assert info.value.field == "model"


# --- scores -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_eap_equals_autograd_along_each_edge(case, direction):
    name, model, prompts, pairs = case
    if name != "tiny" and direction == "denoise":
        pytest.skip("both directions on the tiny model; noising (EAP's own) on the families")
    result = run(model, {"method": "circuit", "prompts": prompts, "direction": direction, "top_k": 0})
    graph = Graph.of(model)
    assert result.labels["edge"] == list(graph.names)
    for i, pair in enumerate(pairs):
        base, source = _runs(pair, direction)
        deltas = _deltas(model, base, source)
        ref = torch.tensor([_base_metric(model, base, pair) + C.edge_gradient(model, base, e, deltas, pair.answer[0], pair.wrong[0])
                            for e in graph.edges])
        got = torch.tensor(result.per_prompt[i])
        assert torch.allclose(got, ref, atol=TOL), (name, (got - ref).abs().max())


def test_eap_ig_equals_the_midpoint_riemann_sum(case):
    name, model, prompts, pairs = case
    steps = 3
    result = run(model, {"method": "circuit", "prompts": prompts[:1], "steps": steps, "top_k": 0})
    graph, pair = Graph.of(model), pairs[0]
    deltas = _deltas(model, pair.clean, pair.corrupted)
    a, b = C.sender_outputs(model, pair.clean)[0], C.sender_outputs(model, pair.corrupted)[0]
    ref = torch.zeros(len(graph.edges))
    for k in range(steps):
        alpha = (k + 0.5) / steps
        embeddings = (a + alpha * (b - a))[None]
        ref += torch.tensor([C.edge_gradient(model, pair.clean, e, deltas, pair.answer[0], pair.wrong[0], embeddings)
                             for e in graph.edges]) / steps
    ref += _base_metric(model, pair.clean, pair)
    got = torch.tensor(result.values)
    assert torch.allclose(got, ref, atol=TOL), (name, (got - ref).abs().max())


# --- exact edges ---------------------------------------------------------------------------------------


def test_exact_edges_equal_the_reference(case):
    """Every edge of the graph patched alone (edge_patching), and the circuit's verified top k (the
    same numbers, from its second step)."""
    name, model, prompts, pairs = case
    graph = Graph.of(model)
    direction = "denoise" if name == "tiny" else "noise"
    edges = run(model, {"method": "edge_patching", "prompts": prompts, "direction": direction, "edges": list(graph.names)})
    circuit = run(model, {"method": "circuit", "prompts": prompts, "direction": direction, "top_k": 7})
    for i, pair in enumerate(pairs):
        base, source = _runs(pair, direction)
        deltas = _deltas(model, base, source)
        ref = torch.tensor([C.edge_value(model, base, e, deltas, pair.answer[0], pair.wrong[0]) for e in graph.edges])
        got = torch.tensor(edges.per_prompt[i])
        assert torch.allclose(got, ref, atol=TOL), (name, (got - ref).abs().max())
        exact = circuit.extras["exact"]
        assert torch.allclose(torch.tensor(exact["per_prompt"][i], dtype=torch.float64), ref[exact["edges"]].double(), atol=TOL)
    # the verified edges are the top 7 by |mean estimated change|
    change = (torch.tensor(circuit.values) - circuit.corrupted if direction == "denoise" else torch.tensor(circuit.values) - circuit.clean)
    assert sorted(circuit.extras["exact"]["edges"]) == sorted(change.abs().argsort(descending=True, stable=True)[:7].tolist())


# --- faithfulness -------------------------------------------------------------------------------------


def test_faithfulness_is_0_and_1_at_the_ends_and_the_reference_at_every_size(case):
    name, model, prompts, pairs = case
    result = run(model, {"method": "circuit", "prompts": prompts, "top_k": 0})
    graph = Graph.of(model)
    f = result.extras["faithfulness"]
    sizes, _ = ladder(len(graph.edges))
    assert f["sizes"] == sizes == [int(p * len(graph.edges)) for p in FRACTIONS]
    curve = f["curve"]
    assert curve[-1] == 1.0  # the full circuit
    assert all(c == 0.0 for c, n in zip(curve, sizes) if n == 0)  # the empty circuit, exactly
    ranking = result.extras["ranking"]
    metrics = []  # [pairs][sizes]
    for pair in pairs:
        source = C.sender_outputs(model, pair.corrupted)
        metrics.append([C.circuit_value(model, pair.clean, graph, set(ranking[:n]), source, pair.answer[0], pair.wrong[0])
                        for n in sizes])
    m = torch.tensor(metrics, dtype=torch.float64)
    gap = (m[:, -1] - m[:, 0]).mean()
    ref = (m - m[:, :1]).mean(0) / gap
    assert torch.allclose(torch.tensor(curve, dtype=torch.float64), ref, atol=TOL), (name, curve, ref.tolist())
    assert torch.allclose(torch.tensor(f["per_prompt"], dtype=torch.float64), (m - m[:, :1]) / gap, atol=TOL)
    # the empty circuit is the corrupted run, the full one the clean run
    assert f["metric_empty"] == pytest.approx(result.corrupted, abs=TOL)
    assert f["metric_full"] == pytest.approx(result.clean, abs=TOL)
    cpr, cmd = areas(list(FRACTIONS), ref.tolist())
    assert f["cpr"]["value"] == pytest.approx(cpr, abs=TOL) and f["cmd"]["value"] == pytest.approx(cmd, abs=TOL)


def test_mean_ablated_faithfulness_equals_the_reference(small_model):
    """faithfulness 'mean': the edges outside a circuit carry their senders' mean over the reference
    set (here the spec's own prompts: the generator does not know the tiny model's sentences)."""
    model, pairs = small_model, R.pairs_of(small_model, TINY_PAIRS)
    result = run(model, {"method": "circuit", "prompts": TINY_PAIRS, "top_k": 0, "faithfulness": "mean"})
    assert result.reference["kind"] == "own"
    graph = Graph.of(model)
    outputs = [C.sender_outputs(model, t) for p in pairs for t in (p.clean, p.corrupted)]
    mean = {s: sum(o[s] for o in outputs) / len(outputs) for s in outputs[0]}
    sizes = result.extras["faithfulness"]["sizes"]
    ranking = result.extras["ranking"]
    m = torch.tensor([[C.circuit_value(model, p.clean, graph, set(ranking[:n]), mean, p.answer[0], p.wrong[0]) for n in sizes]
                      for p in pairs], dtype=torch.float64)
    ref = (m - m[:, :1]).mean(0) / (m[:, -1] - m[:, 0]).mean()
    got = torch.tensor(result.extras["faithfulness"]["curve"], dtype=torch.float64)
    assert got[0] == 0.0 and got[-1] == 1.0
    assert torch.allclose(got, ref, atol=TOL)


def test_the_areas_by_hand():
    # f = 1 everywhere: CPR is the fractions' span, CMD 0; f = 0: the reverse
    span = FRACTIONS[-1] - FRACTIONS[0]
    assert areas(list(FRACTIONS), [1.0] * 10) == pytest.approx((span, 0.0))
    assert areas(list(FRACTIONS), [0.0] * 10) == pytest.approx((0.0, span))
    # one trapezoid of width 0.5 from 0.5 to 1: (0.5 + 1.5) / 2 x 0.5, and |1 - f| = 0.5 on both ends
    assert areas([0.5, 1.0], [0.5, 1.5]) == pytest.approx((0.5, 0.25))


def test_identical_prompts_change_nothing(small_model):
    same = [{**p, "corrupted": p["clean"]} for p in TINY_PAIRS]
    result = run(small_model, {"method": "circuit", "prompts": same, "top_k": 3})
    values = torch.tensor(result.values)
    assert torch.allclose(values, torch.full_like(values, result.clean), atol=1e-6)
    assert torch.allclose(torch.tensor(result.extras["exact"]["values"], dtype=torch.float64), torch.tensor(result.clean, dtype=torch.float64), atol=1e-6)
    assert result.extras["faithfulness"]["curve"] is None  # no gap between the empty and full circuits


def test_the_cost_counts_every_row(small_model):
    """Per pair: the gradient pass's steps, the verified edges, the circuits (not the full one)."""
    from patchstudio.engine.run import plan

    n = len(Graph.of(small_model).edges)
    p = plan(small_model, {"method": "circuit", "prompts": TINY_PAIRS, "steps": 4, "top_k": 5})
    assert p.total == len(TINY_PAIRS) * (4 + 5 + len(ladder(n)[1]))
