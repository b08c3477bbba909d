"""The direct effect of each head against a plain-hook reference: the sender's output from the
counterfactual run, every later head and every MLP from its layer on frozen at the base run, and
the final LayerNorm's scale frozen at the base run's. On a model with an unembedding bias and
non-trivial LayerNorm weights and biases."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio import analysis
from patchstudio.engine.run import run
from patchstudio.specs import parse_spec

TOL = 1e-4


def _metric(metric, logits, clean_logits, ans, wrong):
    final, clean_final = logits[0, -1].double(), clean_logits[0, -1].double()
    if metric == "logit_diff":
        return float(final[ans] - final[wrong])
    lp, clean_lp = final.log_softmax(-1), clean_final.log_softmax(-1)
    if metric == "prob":
        return float(lp[ans].exp())
    return float((clean_lp.exp() * (clean_lp - lp)).sum())  # kl


def _reference(model, direction, metric):
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    per_prompt = []
    for p in TINY_PAIRS:
        clean, corrupted = model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"])
        base, cf = (clean, corrupted) if direction == "noise" else (corrupted, clean)
        ans = int(model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0])
        wrong = int(model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0])
        with torch.no_grad():
            clean_logits = model(clean)
            _, bc = model.run_with_cache(base)
            _, cc = model.run_with_cache(cf)
        values = torch.zeros(n_layers, n_heads)
        for L in range(n_layers):
            for h in range(n_heads):
                def sender(act, hook, L=L, h=h):
                    z = bc[f"blocks.{L}.attn.hook_z"].clone()
                    z[:, :, h] = cc[f"blocks.{L}.attn.hook_z"][:, :, h]
                    return z

                def frozen(name):
                    return lambda act, hook: bc[name]

                hooks = [(f"blocks.{L}.attn.hook_z", sender), ("ln_final.hook_scale", frozen("ln_final.hook_scale"))]
                hooks += [(f"blocks.{l}.attn.hook_z", frozen(f"blocks.{l}.attn.hook_z")) for l in range(L + 1, n_layers)]
                hooks += [(f"blocks.{l}.hook_mlp_out", frozen(f"blocks.{l}.hook_mlp_out")) for l in range(L, n_layers)]
                with torch.no_grad():
                    logits = model.run_with_hooks(base, fwd_hooks=hooks)
                values[L, h] = _metric(metric, logits, clean_logits, ans, wrong)
        per_prompt.append(values)
    return torch.stack(per_prompt).mean(0)


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "kl"])
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_direct_effect_equals_the_plain_hook_reference(perturbed_model, direction, metric):
    result = run(perturbed_model, {"method": "direct_effect", "prompts": TINY_PAIRS, "direction": direction, "metric": metric})
    assert result.axes == ["layer", "head"]
    got = torch.tensor(result.values)
    ref = _reference(perturbed_model, direction, metric)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    base = result.clean if direction == "noise" else result.corrupted
    assert (got - base).abs().max() > 1e-3


def test_direct_effect_is_not_path_patching_to_the_logits(perturbed_model):
    """Path patching to the logits recomputes the MLPs after the sender; the direct effect does not."""
    spec = {"prompts": TINY_PAIRS, "metric": "logit_diff"}
    direct = torch.tensor(run(perturbed_model, {**spec, "method": "direct_effect"}).values)
    path = torch.tensor(run(perturbed_model, {**spec, "method": "path_patching"}).values)
    assert (direct - path).abs().max() > 1e-2


def test_triangulation_judges_the_route_on_the_direct_effect():
    spec = parse_spec({"prompts": TINY_PAIRS, "component": "head"})
    specs = analysis.triangulation_specs(spec, layer=0, head=1)
    assert specs["direct"].method == "direct_effect" and specs["direct"].direction == "denoise"
    assert specs["direct"].prompts == spec.prompts and specs["direct"].metric == spec.metric
    flag = "Most of its effect goes through later components, not directly to the logits."
    # path to the logits large (through later MLPs), direct effect small: the flag is raised
    assert flag in analysis.triangulation_flags({"patching": 0.8, "ablation": 0.6, "path": 0.7, "direct": 0.1})
    # path to the logits small but the direct effect large: no flag
    assert flag not in analysis.triangulation_flags({"patching": 0.8, "ablation": 0.6, "path": 0.1, "direct": 0.7})


def test_triangulation_rows_include_the_direct_effect(tiny_model):
    spec = parse_spec({"prompts": TINY_PAIRS, "component": "head"})
    runs = {role: run(tiny_model, s) for role, s in analysis.triangulation_specs(spec, layer=1, head=2).items()}
    table = analysis.triangulate(runs["patching"], runs, layer=1, pos=None, head=2)
    row = next(r for r in table.rows if r["key"] == "direct")
    assert row["method"] == "direct effect on the logits, final LayerNorm scale frozen (restoration, sufficiency-style)" and row["value"] == runs["direct"].values[1][2]
