"""Path patching against a plain-hook reference written here: one or two forward passes per sender."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from helpers import TINY_PAIRS
from patchstudio.engine.inputs import InputError
from patchstudio.engine.run import run
from patchstudio.specs import parse_spec

TOL = 1e-4


def _reference(model, direction, receivers):
    """Wang et al.'s definition, literally: sender from the counterfactual run, every other head frozen
    at the base run, MLPs recomputed; then (for head receivers) a free run with only the receivers'
    inputs set to what step 1 gave them."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    per_prompt = []
    for p in TINY_PAIRS:
        clean, corrupted = model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"])
        base, cf = (clean, corrupted) if direction == "noise" else (corrupted, clean)
        ans = int(model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0])
        wrong = int(model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0])
        with torch.no_grad():
            base_logits, bc = model.run_with_cache(base)
            _, cc = model.run_with_cache(cf)
        base_metric = float(base_logits[0, -1, ans] - base_logits[0, -1, wrong])
        values = torch.full((n_layers, n_heads), base_metric)
        for L in range(n_layers):
            for h in range(n_heads):
                def freeze(act, hook, layer=None):
                    return act

                hooks = []
                for l, name in enumerate(z_names):
                    def set_z(act, hook, l=l, name=name):
                        z = bc[name].clone()
                        if l == L:
                            z[:, :, h] = cc[name][:, :, h]
                        return z

                    hooks.append((name, set_z))
                if not receivers:
                    with torch.no_grad():
                        logits = model.run_with_hooks(base, fwd_hooks=hooks)
                    values[L, h] = float(logits[0, -1, ans] - logits[0, -1, wrong])
                    continue
                live = [r for r in receivers if r["layer"] > L]
                if not live:
                    continue
                recorded = {}
                record_hooks = []
                for r in live:
                    name = f"blocks.{r['layer']}.attn.hook_{r['input']}"

                    def record(act, hook, name=name):
                        recorded[name] = act.clone()
                        return act

                    record_hooks.append((name, record))
                with torch.no_grad():
                    model.run_with_hooks(base, fwd_hooks=hooks + record_hooks)
                patch_hooks = []
                for r in live:
                    name = f"blocks.{r['layer']}.attn.hook_{r['input']}"

                    def patch(act, hook, name=name, head=r["head"]):
                        act = act.clone()
                        act[:, :, head] = recorded[name][:, :, head]
                        return act

                    patch_hooks.append((name, patch))
                with torch.no_grad():
                    logits = model.run_with_hooks(base, fwd_hooks=patch_hooks)
                values[L, h] = float(logits[0, -1, ans] - logits[0, -1, wrong])
        per_prompt.append(values)
    return torch.stack(per_prompt).mean(0)


RECEIVER_SETS = {
    "logits": [],
    "one query": [{"layer": 1, "head": 2, "input": "q"}],
    "keys and values": [{"layer": 1, "head": 0, "input": "k"}, {"layer": 1, "head": 3, "input": "v"}],
}


@pytest.mark.parametrize("receivers", list(RECEIVER_SETS))
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_the_plain_hook_reference(tiny_model, receivers, direction):
    spec = {"method": "path_patching", "prompts": TINY_PAIRS, "component": "head", "direction": direction,
            "receivers": RECEIVER_SETS[receivers]}
    result = run(tiny_model, spec)
    ref = _reference(tiny_model, direction, RECEIVER_SETS[receivers])
    got = torch.tensor(result.values)
    assert result.axes == ["layer", "head"]
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    base = result.clean if direction == "noise" else result.corrupted
    assert (got - base).abs().max() > 1e-3  # some path matters
    if receivers != "logits":  # senders in the receivers' layer have no path to them
        assert torch.allclose(got[1], torch.full_like(got[1], base), atol=1e-5)


def test_path_to_the_logits_from_the_last_layer_equals_activation_patching(tiny_model):
    """A last-layer head's only route onward is the residual stream to the logits (and the MLP)."""
    path = run(tiny_model, {"method": "path_patching", "prompts": TINY_PAIRS, "component": "head"})
    act = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "direction": "noise"})
    assert torch.allclose(torch.tensor(path.values[-1]), torch.tensor(act.values[-1]), atol=1e-5)


def test_bad_path_patching_specs_name_the_problem(tiny_model):
    with pytest.raises(ValidationError, match="component must be 'head'"):
        parse_spec({"method": "path_patching", "prompts": TINY_PAIRS, "component": "mlp_out"})
    with pytest.raises(ValidationError, match="positions must be 'all'"):
        parse_spec({"method": "path_patching", "prompts": TINY_PAIRS, "positions": "each"})
    with pytest.raises(InputError, match="receiver L5 H0 does not exist: the model has 2 layers of 4 heads"):
        run(tiny_model, {"method": "path_patching", "prompts": TINY_PAIRS, "receivers": [{"layer": 5, "head": 0}]})


RECEIVERS_4_LAYERS = [{"layer": 2, "head": 1, "input": "q"}, {"layer": 3, "head": 0, "input": "k"},
                      {"layer": 3, "head": 2, "input": "v"}, {"layer": 1, "head": 3, "input": "v"}]


@pytest.mark.parametrize("receivers", [[], RECEIVERS_4_LAYERS], ids=["logits", "receivers-in-layers-1-to-3"])
def test_four_layers_freeze_every_later_head_not_just_the_next_layer(perturbed_model, receivers):
    """With four layers, a sender in layer 0 reaches receivers two and three layers on: every head of
    every later layer must stay frozen at the base run (two layers hide a next-layer-only freeze)."""
    result = run(perturbed_model, {"method": "path_patching", "prompts": TINY_PAIRS, "receivers": receivers})
    ref = _reference(perturbed_model, "noise", receivers)
    got = torch.tensor(result.values)
    assert got.shape == (4, 4)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got[:2] - result.clean).abs().max() > 1e-2  # early senders do reach the later layers
