"""Grouped-query attention (n_key_value_heads < n_heads) on TransformerLens's native bridge: key and
value sweeps run over the key/value heads, and a query head's k/v input is its group's head."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS, build_tiny_model
from patchstudio.engine.run import run

TOL = 1e-4
N_HEADS, N_KV = 4, 2  # query heads 0-1 share k/v head 0, heads 2-3 share k/v head 1


@pytest.fixture(scope="module")
def gqa_model(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, n_heads=N_HEADS, n_key_value_heads=N_KV, perturb=True, seed=5)
    assert model.cfg.n_key_value_heads == N_KV
    return model


def _pairs(model):
    out = []
    for p in TINY_PAIRS:
        clean, corrupted = model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"])
        ans = int(model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0])
        wrong = int(model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0])
        out.append((clean, corrupted, ans, wrong))
    return out


def _diff(logits, ans, wrong):
    return float(logits[0, -1, ans] - logits[0, -1, wrong])


def test_the_native_bridge_shares_key_heads_by_group(gqa_model):
    clean = _pairs(gqa_model)[0][0]
    with torch.no_grad():
        _, base = gqa_model.run_with_cache(clean)
        assert base["blocks.0.attn.hook_k"].shape[2] == N_KV and base["blocks.0.attn.hook_q"].shape[2] == N_HEADS

        noise = torch.randn(base["blocks.0.attn.hook_k"][:, :, 1].shape, generator=torch.Generator().manual_seed(0))

        def bump(act, hook):  # different at each position (a constant shift of every key changes no pattern)
            act = act.clone()
            act[:, :, 1] += noise
            return act

        with gqa_model.hooks(fwd_hooks=[("blocks.0.attn.hook_k", bump)]):
            _, bumped = gqa_model.run_with_cache(clean)
    moved = (bumped["blocks.0.attn.hook_pattern"] - base["blocks.0.attn.hook_pattern"]).abs().amax((0, 2, 3))
    assert moved[:2].max() < 1e-6 and moved[2:].min() > 1e-4  # k/v head 1 serves query heads 2 and 3


@pytest.mark.parametrize("component, hook", [("head_k", "attn.hook_k"), ("head_v", "attn.hook_v")])
@pytest.mark.parametrize("positions", ["all", "each"])
def test_key_and_value_patching_sweeps_the_key_value_heads(gqa_model, component, hook, positions):
    result = run(gqa_model, {"prompts": TINY_PAIRS, "component": component, "positions": positions})
    assert result.labels["head"] == [str(g) for g in range(N_KV)]
    expected = []
    for clean, corrupted, ans, wrong in _pairs(gqa_model):
        _, cache = gqa_model.run_with_cache(clean)
        seq = clean.shape[1]
        values = torch.zeros(2, seq, N_KV) if positions == "each" else torch.zeros(2, N_KV)
        for layer in range(2):
            name = f"blocks.{layer}.{hook}"
            for pos in range(seq) if positions == "each" else [None]:
                for g in range(N_KV):
                    def patch(act, hook, pos=pos, g=g, name=name):
                        act = act.clone()
                        where = (slice(None), slice(None) if pos is None else pos, g)
                        act[where] = cache[name][where]
                        return act

                    with torch.no_grad():
                        value = _diff(gqa_model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]), ans, wrong)
                    values[(layer, g) if pos is None else (layer, pos, g)] = value
        expected.append(values)
    got = torch.tensor(result.values)
    ref = torch.stack(expected).mean(0)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_attribution_over_key_heads_equals_autograd(gqa_model):
    result = run(gqa_model, {"method": "attribution_patching", "prompts": TINY_PAIRS, "component": "head_k"})
    expected = []
    for clean, corrupted, ans, wrong in _pairs(gqa_model):
        _, src = gqa_model.run_with_cache(clean)
        base_logits, bc = gqa_model.run_with_cache(corrupted)
        values = torch.zeros(2, N_KV)
        for layer in range(2):
            name = f"blocks.{layer}.attn.hook_k"
            for g in range(N_KV):
                t = torch.zeros((), requires_grad=True)

                def site(act, hook, g=g, name=name):
                    act = act.clone()
                    act[:, :, g] = act[:, :, g] + t * (src[name][:, :, g] - bc[name][:, :, g])
                    return act

                logits = gqa_model.run_with_hooks(corrupted, fwd_hooks=[(name, site)])
                (grad,) = torch.autograd.grad(logits[0, -1, ans] - logits[0, -1, wrong], [t])
                values[layer, g] = _diff(base_logits.detach(), ans, wrong) + float(grad)
        expected.append(values)
    assert torch.allclose(torch.tensor(result.values), torch.stack(expected).mean(0), atol=TOL)


def test_a_key_receiver_is_its_groups_key_head(gqa_model):
    """Receiver L1H3.k is key head 1 (shared with L1H2): path patching to it equals path patching to
    L1H2.k, differs from L1H1.k, matches a plain-hook reference on key head 1, and says so."""
    spec = {"method": "path_patching", "prompts": TINY_PAIRS}
    three = run(gqa_model, {**spec, "receivers": [{"layer": 1, "head": 3, "input": "k"}]})
    two = run(gqa_model, {**spec, "receivers": [{"layer": 1, "head": 2, "input": "k"}]})
    one = run(gqa_model, {**spec, "receivers": [{"layer": 1, "head": 1, "input": "k"}]})
    assert three.values == two.values
    assert torch.tensor(three.values[0]).sub(torch.tensor(one.values[0])).abs().max() > 1e-4
    assert any("receiver L1H3.k is k head 1, shared by query heads 2-3" in w for w in three.warnings)
    expected = []
    for clean, corrupted, ans, wrong in _pairs(gqa_model):
        with torch.no_grad():
            _, bc = gqa_model.run_with_cache(clean)
            _, cc = gqa_model.run_with_cache(corrupted)
        row = []
        for h in range(N_HEADS):  # senders in layer 0
            def step1(act, hook, h=h):
                z = bc["blocks.0.attn.hook_z"].clone()
                z[:, :, h] = cc["blocks.0.attn.hook_z"][:, :, h]
                return z

            recorded = {}

            def record(act, hook):
                recorded["k"] = act.clone()

            def freeze_later(act, hook):
                return bc["blocks.1.attn.hook_z"]

            with torch.no_grad():
                gqa_model.run_with_hooks(clean, fwd_hooks=[("blocks.0.attn.hook_z", step1), ("blocks.1.attn.hook_k", record),
                                                          ("blocks.1.attn.hook_z", freeze_later)])

            def step2(act, hook):
                act = act.clone()
                act[:, :, 1] = recorded["k"][:, :, 1]
                return act

            with torch.no_grad():
                row.append(_diff(gqa_model.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_k", step2)]), ans, wrong))
        expected.append(row)
    assert three.values[0] == pytest.approx(torch.tensor(expected).mean(0).tolist(), abs=TOL)


def test_ablation_and_self_repair_run_under_gqa(gqa_model):
    values = run(gqa_model, {"method": "ablation", "ablation": "zero", "prompts": TINY_PAIRS, "component": "head_v"})
    assert len(values.values[0]) == N_KV
    repair = run(gqa_model, {"method": "self_repair", "ablation": "zero", "prompts": TINY_PAIRS, "targets": [{"layer": 0, "head": 3}]})
    assert len(repair.values[0]) == N_HEADS  # z and its direct effect are per query head
