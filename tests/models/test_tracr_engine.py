"""The engine's methods on the compiled Tracr models, against the independent references of
tests/references.py (TransformerLens's patching module, plain hooks, autograd) to 1e-4.

What is particular here: two of the models attend in both directions (``attention_dir``
"bidirectional"), where the engine must not use its causal shortcuts (the suffix pass, skipping
patches before the prompts' first difference), and their weights are Tracr's: exact zeros, huge
saturating MLPs, no LayerNorm. Prompts come from the models' prompt families; the first pair of
tracr-reverse differs at its first word, the others later, so a wrong causal shortcut would show.
"""

from __future__ import annotations

import pytest
import torch

import patchstudio
import references as R
from patchstudio.errors import InputError
from patchstudio.engine.profile import profile
from patchstudio.engine.run import run
from patchstudio.models.tracr import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = R.TOL


def test_causal_shortcuts_only_where_attention_is_causal(tracr_name, tracr_model, tracr_pairs):
    assert profile(tracr_model).causal == TASKS[tracr_name].causal
    assert profile(tracr_model).suffix_supported(tracr_pairs[0].clean.shape[-1]) == TASKS[tracr_name].causal


@pytest.mark.parametrize("key", [("head", "all"), ("head", "each"), ("mlp_out", "all"), ("resid_pre", "each"),
                                 ("head_q", "all"), ("head_k", "all"), ("head_v", "all")],
                         ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_activation_patching_equals_transformer_lens(tracr_model, tracr_prompts, tracr_pairs, key, direction):
    # tokens changed before the final one (END is its own role): pairs that change different numbers
    # have no role axis, and are refused rather than averaged by index
    changed = {int((p.clean[..., :-1] != p.corrupted[..., :-1]).sum()) for p in tracr_pairs}
    if key[1] == "each" and len(changed) > 1:
        with pytest.raises(InputError) as refused:
            run(tracr_model, {"prompts": tracr_prompts, "component": key[0], "positions": key[1], "direction": direction})
        assert refused.value.field == "positions" and "cannot be aligned by role" in str(refused.value)
        return
    result = run(tracr_model, {"prompts": tracr_prompts, "component": key[0], "positions": key[1], "direction": direction})
    cells, ref = R.tl_patching(tracr_model, tracr_pairs, key, direction, "logit_diff")
    if key[1] == "each":  # cells are roles: each role at one token index in every prompt is TL's cell at that index
        pos = result.axes.index("pos")
        index_role = {r.at[0][0]: k for k, r in enumerate(result.roles) if all(a == r.at[0] and len(a) == 1 for a in r.at)}
        assert len(index_role) >= 2, result.roles
        keep = [j for j, cell in enumerate(cells) if cell[pos] in index_role]
        cells = [cell[:pos] + (index_role[cell[pos]],) + cell[pos + 1:] for j, cell in enumerate(cells) if j in keep]
        ref = ref[keep]
    got = R.engine_cells(result.values, cells)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    clean, corrupted = R.baselines(tracr_model, tracr_pairs, "logit_diff")
    assert (result.clean, result.corrupted) == (pytest.approx(clean, abs=TOL), pytest.approx(corrupted, abs=TOL))


def test_zero_ablation_of_heads_equals_plain_hooks(tracr_model, tracr_prompts, tracr_pairs):
    n_layers, n_heads = int(tracr_model.cfg.n_layers), int(tracr_model.cfg.n_heads)
    expected = torch.zeros(n_layers, n_heads)
    for pair in tracr_pairs:
        seq = pair.clean.shape[1]
        for layer in range(n_layers):
            name = R.hook_name("head", layer)
            zeros = torch.zeros_like(R.cache_of(tracr_model, pair.clean, [name])[name])
            for h in range(n_heads):
                with torch.no_grad():
                    expected[layer, h] += float(R.score(tracr_model, pair.clean, pair, "logit_diff",
                                                        [(name, R.set_at("head", zeros, seq, None, h))]))
    result = run(tracr_model, {"method": "ablation", "ablation": "zero", "prompts": tracr_prompts, "component": "head"})
    assert torch.allclose(torch.tensor(result.values), expected / len(tracr_pairs), atol=TOL)


@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_plain_hooks(tracr_name, tracr_model, tracr_prompts, tracr_pairs, direction):
    """Receivers: the logits, and the last head's query, key and value inputs."""
    last = int(tracr_model.cfg.n_layers) - 1
    last_head = max(layer for layer in range(last + 1) if f"a{layer}.h0" in _circuit(tracr_name))
    for receivers in ([], [{"layer": last_head, "head": 0, "input": x} for x in "qkv"]):
        spec = {"method": "path_patching", "prompts": tracr_prompts, "direction": direction, "receivers": receivers}
        got = torch.tensor(run(tracr_model, spec).values)
        ref = R.path_patching(tracr_model, tracr_pairs, direction, receivers)
        assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def _circuit(name: str) -> list[str]:
    from patchstudio.models.tracr import load_ground_truth

    return load_ground_truth(name)["circuit_nodes"]


@pytest.mark.parametrize("component", ["head", "mlp_out"])
def test_attribution_equals_autograd(tracr_model, tracr_prompts, tracr_pairs, component):
    """Denoising attribution patching: base (corrupted) metric + d/dt metric(A + t (A_clean - A))."""
    n_layers = int(tracr_model.cfg.n_layers)
    units = [(layer, h) for layer in range(n_layers)
             for h in (range(int(tracr_model.cfg.n_heads)) if component == "head" else [None])]
    expected = torch.zeros(len(units))
    for pair in tracr_pairs:
        names = [R.hook_name(component, layer) for layer in range(n_layers)]
        clean, base = R.cache_of(tracr_model, pair.clean, names), R.cache_of(tracr_model, pair.corrupted, names)
        with torch.no_grad():
            base_metric = float(R.score(tracr_model, pair.corrupted, pair, "logit_diff"))
        for i, (layer, h) in enumerate(units):
            name, t = R.hook_name(component, layer), torch.zeros((), requires_grad=True)
            index = (slice(None), slice(None)) + (() if h is None else (h,))

            def site(act, hook, name=name, index=index, t=t):
                act = act.clone()
                act[index] = act[index] + t * (clean[name][index] - base[name][index])
                return act

            (g,) = torch.autograd.grad(R.score(tracr_model, pair.corrupted, pair, "logit_diff", [(name, site)]), [t])
            expected[i] += base_metric + float(g)
    result = run(tracr_model, {"method": "attribution_patching", "prompts": tracr_prompts, "component": component})
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, expected / len(tracr_pairs), atol=TOL), (got - expected / len(tracr_pairs)).abs().max()
