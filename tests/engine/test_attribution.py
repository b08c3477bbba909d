"""Attribution patching equals the autograd product it promises, per component, to 1e-4."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run

TOL = 1e-4
HOOKS = {"head": "attn.hook_z", "head_q": "attn.hook_q", "head_k": "attn.hook_k", "head_v": "attn.hook_v",
         "resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out"}


def _reference(model, component, positions, direction, alphas=(None,)):
    """Per site: base metric + mean over alphas of d/dt metric(A_base + t (A_src - A_base) on the site).

    With alphas (IG), the input embeddings are interpolated base -> source first (resid_pre of layer 0)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out = []
    for p in TINY_PAIRS:
        clean, corrupted = model.to_tokens(p["clean"]), model.to_tokens(p["corrupted"])
        base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
        ans = int(model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0])
        wrong = int(model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0])
        _, src = model.run_with_cache(source)
        base_logits, bc = model.run_with_cache(base)
        base_metric = float((base_logits[0, -1, ans] - base_logits[0, -1, wrong]).detach())
        seq = base.shape[1]
        values = []
        for layer in range(n_layers):
            name = f"blocks.{layer}.{HOOKS[component]}"
            units = [(pos, h) for pos in (range(seq) if positions == "each" else [None])
                     for h in (range(n_heads) if component.startswith("head") else [None])]
            for pos, h in units:
                index = (slice(None), slice(None) if pos is None else pos) + (() if h is None else (h,))
                total = 0.0
                for alpha in alphas:
                    t = torch.zeros((), requires_grad=True)
                    store = {}

                    def interp(act, hook, alpha=alpha):
                        return bc["blocks.0.hook_resid_pre"] + alpha * (src["blocks.0.hook_resid_pre"] - bc["blocks.0.hook_resid_pre"])

                    def site(act, hook, index=index, name=name):
                        act = act.clone()
                        act[index] = act[index] + t * (src[name][index] - bc[name][index])
                        return act

                    hooks = [(name, site)] if alpha is None else [("blocks.0.hook_resid_pre", interp), (name, site)]
                    logits = model.run_with_hooks(base, fwd_hooks=hooks)
                    (g,) = torch.autograd.grad(logits[0, -1, ans] - logits[0, -1, wrong], [t])
                    total += float(g)
                values.append(base_metric + total / len(alphas))
        out.append(torch.tensor(values))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("component, positions", [("head", "all"), ("head_v", "all"), ("resid_pre", "each"), ("mlp_out", "all")])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_autograd(tiny_model, component, positions, direction):
    result = run(tiny_model, {"method": "attribution_patching", "prompts": TINY_PAIRS, "component": component,
                              "positions": positions, "direction": direction})
    ref = _reference(tiny_model, component, positions, direction)
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_integrated_gradients_equal_the_riemann_sum_of_autograd(tiny_model):
    steps = 4
    result = run(tiny_model, {"method": "attribution_patching", "prompts": TINY_PAIRS, "component": "head", "steps": steps})
    alphas = [(k + 0.5) / steps for k in range(steps)]
    ref = _reference(tiny_model, "head", "all", "denoise", alphas=alphas)
    assert torch.allclose(torch.tensor(result.values).reshape(-1), ref, atol=TOL)


@pytest.mark.parametrize(
    "component, positions, direction",
    [("head", "all", "noise"), ("head_q", "all", "denoise"), ("head_k", "all", "noise"), ("head_v", "all", "denoise"),
     ("resid_pre", "each", "denoise"), ("resid_pre", "all", "noise"), ("attn_out", "each", "noise"), ("mlp_out", "all", "denoise")],
)
def test_integrated_gradients_for_every_component_equal_autograd(tiny_model, component, positions, direction):
    """steps > 1 for every component attribution supports (resid_pre used to raise: its layer-0
    activation is the interpolated input itself, built outside the autograd graph)."""
    steps = 2
    result = run(tiny_model, {"method": "attribution_patching", "prompts": TINY_PAIRS, "component": component,
                              "positions": positions, "direction": direction, "steps": steps})
    ref = _reference(tiny_model, component, positions, direction, alphas=[(k + 0.5) / steps for k in range(steps)])
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_integrated_gradients_track_exact_patching_better(tiny_model):
    spec = {"prompts": TINY_PAIRS, "component": "head"}
    exact = torch.tensor(run(tiny_model, spec).values)
    linear = torch.tensor(run(tiny_model, {**spec, "method": "attribution_patching"}).values)
    ig = torch.tensor(run(tiny_model, {**spec, "method": "attribution_patching", "steps": 16}).values)
    assert (ig - exact).abs().mean() < (linear - exact).abs().mean()


def test_identical_prompts_estimate_no_effect(tiny_model):
    same = [{**p, "corrupted": p["clean"]} for p in TINY_PAIRS]
    result = run(tiny_model, {"method": "attribution_patching", "prompts": same, "component": "head", "positions": "each"})
    values = torch.tensor(result.values)
    assert torch.allclose(values, torch.full_like(values, result.clean), atol=1e-6)


def test_unsupported_component_is_refused_by_the_spec():
    from pydantic import ValidationError

    from patchstudio.specs import parse_spec

    with pytest.raises(ValidationError, match="attribution patching supports head"):
        parse_spec({"method": "attribution_patching", "prompts": TINY_PAIRS, "component": "pattern"})


def test_a_zero_gradient_metric_is_warned_about(perturbed_model):
    """KL(clean || run) at the clean run is at its minimum: its gradient is zero, so noising's linear
    estimate is the clean metric everywhere, whatever the patch does."""
    spec = {"method": "attribution_patching", "prompts": TINY_PAIRS, "metric": "kl", "direction": "noise"}
    result = run(perturbed_model, spec)
    values = torch.tensor(result.values)
    assert torch.allclose(values, torch.full_like(values, result.clean), atol=1e-6)
    exact = torch.tensor(run(perturbed_model, {**spec, "method": "activation_patching"}).values)
    assert (exact - result.clean).abs().max() > 1e-3  # while exact patching shows effects
    assert any(w.startswith("The metric's gradient is zero at the clean run") for w in result.warnings)
    for quiet in ({**spec, "direction": "denoise"}, {**spec, "steps": 4}, {**spec, "metric": "logit_diff"}):
        assert not any("gradient is zero" in w for w in run(perturbed_model, quiet).warnings), quiet


@pytest.mark.parametrize("component", ["head", "head_q", "head_k", "head_v", "resid_pre", "attn_out", "mlp_out"])
@pytest.mark.parametrize("positions", ["all", "each"])
def test_a_pass_over_the_suffix_gives_the_whole_passes_estimates(perturbed_model, component, positions):
    """Prompts that first differ late: the forward and backward passes from the first difference
    on (earlier keys and values from the base run) give the full passes' estimates exactly, with 0
    at the earlier positions; and the suffix pass really ran (a wrong prefix changes the answer)."""
    from patchstudio.engine import hooks as H
    from patchstudio.engine.methods.attribution_patching import attribution_sweep
    from patchstudio.engine.metrics import Readout
    from patchstudio.engine.profile import profile

    model = perturbed_model
    clean = model.to_tokens("When Mary and John went to the store , John gave a drink to")
    corrupted = model.to_tokens("When Mary and John went to the store , Mary gave a drink to")
    first = int((clean != corrupted).nonzero()[0, 1])
    assert first >= 8
    names = list(dict.fromkeys(H.source_hooks(component, int(model.cfg.n_layers)) + profile(model).kv_names))
    with torch.no_grad():
        _, base = model.run_with_cache(corrupted, names_filter=names)
        _, source = model.run_with_cache(clean, names_filter=names)
    tid = model.tokenizer.convert_tokens_to_ids
    readout = Readout(model, "logit_diff", tid("Mary"), tid("John"))
    kv = {n: base[n] for n in profile(model).kv_names}
    whole = attribution_sweep(model, corrupted, base, source, component, positions, readout)
    cut = attribution_sweep(model, corrupted, base, source, component, positions, readout, same_before=first, kv=kv)
    assert cut.shape == whole.shape
    assert torch.allclose(cut, whole, atol=1e-4), float((cut - whole).abs().max())  # the engine-wide tolerance
    assert (whole != whole[0]).any()  # some estimate differs from the base metric
    # the prefix really comes from kv: a wrong prefix moves the estimates
    wrong = {n: v + 1.0 for n, v in kv.items()}
    moved = attribution_sweep(model, corrupted, base, source, component, positions, readout, same_before=first, kv=wrong)
    assert not torch.allclose(moved, whole, atol=1e-3)
