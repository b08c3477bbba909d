"""The shipped ground-truth circuits, checked independently of how compile.py derived them (from
Tracr's craft model): from the shipped weights alone, an edge sender -> receiver input exists iff
the receiver's input weights read a residual dimension the sender's output weights write; a
node is in the circuit iff its weights are not all zero; and ACDC's published edge lists for
the two tasks it was scored on (Conmy et al. 2023) are contained in ours.

A head's reads and writes are those of its circuits, not of single matrices: its query reads the
rows of W_Q W_K^T that are not zero, its key the columns, its value the rows of W_V W_O and it
writes the columns (Tracr's key and value maps are projections onto whole declared subspaces,
some directions of which the query never scores, e.g. the largest sort key, never smaller than
another)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from patchstudio.models.tracr import TASKS, TRACR_MODELS, load_ground_truth

EPS = 1e-9  # Tracr leaves unused weights exactly 0; anything above this is a read or a write


@pytest.fixture(scope="module", params=list(TASKS))
def name(request):
    return request.param


def _nonzero(w: torch.Tensor, dim: int) -> set[int]:
    """Indices along ``dim`` where some weight is nonzero."""
    other = [d for d in range(w.dim()) if d != dim]
    return set(torch.nonzero(w.abs().amax(dim=other) > EPS).flatten().tolist()) if other else set()


def weight_graph(name: str) -> tuple[list[str], dict[str, set[int]], dict[tuple[str, str], set[int]]]:
    """(nodes in forward order, what each sender writes, what each receiver input reads), from the weights."""
    truth = load_ground_truth(name)
    w = load_file(str(TRACR_MODELS[name] / "model.safetensors"))
    n_layers, n_heads = truth["n_layers"], truth["n_heads"]
    d_head = w["blocks.0.attn.q.weight"].shape[0] // n_heads
    writes = {"input": _nonzero(w["embed.weight"], 1) | _nonzero(w["pos_embed.weight"], 1)}
    reads: dict[tuple[str, str], set[int]] = {}
    order = ["input"]
    for layer in range(n_layers):
        b = f"blocks.{layer}"
        assert (w[f"{b}.attn.o.bias"] == 0).all() and (w[f"{b}.mlp.out.bias"] == 0).all()
        for h in range(n_heads):
            rows = slice(h * d_head, (h + 1) * d_head)
            node = f"a{layer}.h{h}"
            order.append(node)
            w_q, w_k, w_v = (w[f"{b}.attn.{x}.weight"][rows].T.double() for x in "qkv")  # [d_model, d_head]
            qk, ov = w_q @ w_k.T, w_v @ w[f"{b}.attn.o.weight"][:, rows].T.double()  # [d_model, d_model]
            reads[(node, "q")], reads[(node, "k")] = _nonzero(qk, 0), _nonzero(qk, 1)
            reads[(node, "v")], writes[node] = _nonzero(ov, 0), _nonzero(ov, 1)
        order.append(f"m{layer}")
        writes[f"m{layer}"] = _nonzero(w[f"{b}.mlp.out.weight"], 0)
        reads[(f"m{layer}", "in")] = _nonzero(w[f"{b}.mlp.in.weight"], 1)
    order.append("logits")
    reads[("logits", "in")] = _nonzero(w["unembed.weight"], 1)
    return order, writes, reads


def test_edges_are_exactly_where_weights_write_what_weights_read(name):
    truth = load_ground_truth(name)
    order, writes, reads = weight_graph(name)
    expected = {}
    for (receiver, inp), read in reads.items():
        r = order.index(receiver)
        for sender in order[:r]:
            if sender.startswith("m") and receiver.startswith("a") and sender[1:] == receiver[1:].split(".")[0]:
                continue  # same layer: the MLP runs after the heads
            shared = writes[sender] & read
            if shared:
                suffix = f"<{inp}>" if receiver.startswith("a") else ""
                expected[f"{sender}->{receiver}{suffix}"] = sorted(truth["residual"][i] for i in shared)
    shipped = {e["name"]: sorted(e["via"]) for e in truth["edges"]}
    assert shipped == expected
    assert len(shipped) >= 5  # a real circuit, not an empty list


def test_circuit_nodes_are_exactly_the_nonzero_blocks(name):
    truth = load_ground_truth(name)
    order, writes, reads = weight_graph(name)
    nonzero = [n for n in order[1:-1] if writes[n] or any(reads[k] for k in reads if k[0] == n)]
    assert truth["circuit_nodes"] == nonzero
    assert 0 < len(nonzero) < len(order) - 2  # some blocks are Tracr's zero padding: negatives exist


def test_layout_names_every_node_of_the_graph(name):
    """EAP-IG's node names (input, a{L}.h{H}, m{L}, logits) and edge names (sender->receiver<q|k|v>)."""
    truth = load_ground_truth(name)
    n_layers, n_heads = truth["n_layers"], truth["n_heads"]
    expected = ["input"] + [n for layer in range(n_layers) for n in [*(f"a{layer}.h{h}" for h in range(n_heads)),
                                                                      f"m{layer}"]] + ["logits"]
    assert [n["name"] for n in truth["nodes"]] == expected
    for e in truth["edges"]:
        suffix = f"<{e['input']}>" if e["receiver"].startswith("a") else ""
        assert e["name"] == f"{e['sender']}->{e['receiver']}{suffix}"
        assert e["constant"] == (e["via"] == ["one"])


# ACDC's edge lists (acdc/tracr_task/utils.py, get_tracr_reverse_edges / get_tracr_proportion_edges,
# "generated from ACDC run with threshold epsilon, metric l2 and zero ablation"), in our names: their
# hook_embed and hook_pos_embed are our input node, blocks.L.attn.hook_result head 0 is aL.h0,
# blocks.L.hook_mlp_out is mL, the final resid_post is the logits.
ACDC_EDGES = {
    "tracr-reverse": {
        "a3.h0->logits", "m2->a3.h0<q>", "input->a3.h0<k>", "input->a3.h0<v>", "m1->m2", "m0->m1", "input->m1",
        "a0.h0->m0", "input->m0", "input->a0.h0<v>",
    },
    "tracr-proportion": {"a1.h0->logits", "input->a1.h0<q>", "input->a1.h0<k>", "m0->a1.h0<v>", "input->m0"},
}


@pytest.mark.parametrize("model", list(ACDC_EDGES))
def test_acdcs_published_edges_are_in_ours(model):
    ours = {e["name"] for e in load_ground_truth(model)["edges"]}
    assert ACDC_EDGES[model] <= ours
    # ours adds the reads ACDC's zero-ablation run did not need (docs/tracr-models.md lists them)
    extra = {"tracr-reverse": {"input->a0.h0<q>", "input->a0.h0<k>", "input->a3.h0<q>"},
             "tracr-proportion": {"input->logits"}}[model]
    assert ours - ACDC_EDGES[model] == extra
