"""Every method on five architecture families, against independent references to 1e-4.

The models (tests/family_models.py) are tiny random GPT-2, Pythia (GPT-NeoX), Llama, Gemma 2 and
Qwen2 models with perturbed norms and biases, saved with save_pretrained and loaded through
``patchstudio.load_model(directory)``. The references (tests/references.py) are TransformerLens's
patching module, plain hooks on full forward passes and autograd: none of them uses the engine's
shortcuts, which are exactly where another architecture could be silently wrong.

Every sweep is compared cell by cell. The module runs torch on one thread (``one_thread``): the
models are tiny.
"""

from __future__ import annotations

import pytest
import torch

import references as R
from family_models import FAMILIES, MULTI_TOKEN_PAIRS, PAIRS
from patchstudio.engine.inputs import InputError
from patchstudio.engine.methods.ablation import resample_index
from patchstudio.engine.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = R.TOL
ARCH = {"gpt2": "GPT2LMHeadModel", "neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
        "gemma2": "Gemma2ForCausalLM", "qwen2": "Qwen2ForCausalLM"}


@pytest.fixture(scope="session", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def model(family, family_models):
    return family_models(family)


@pytest.fixture(scope="session")
def pairs(model):
    return R.pairs_of(model, PAIRS)


# --- loading -------------------------------------------------------------------------------------------


def test_loads_as_the_hugging_face_model_computes(family, model, family_dirs):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(family_dirs(family)), attn_implementation="eager").eval()
    tokens = model.to_tokens(PAIRS[0]["clean"])
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert model.cfg.architecture == ARCH[family]
    assert theirs.std() > 1.0  # logits well above float noise
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_tokenizer_as_it_is(family, model):
    """Names are one token with their leading space as each tokenizer writes it; BOS per model."""
    pair = R.pairs_of(model, PAIRS[:1])[0]
    assert len(pair.answer) == len(pair.wrong) == 1
    first = model.to_str_tokens(PAIRS[0]["clean"])[0]
    bos = {"gpt2": "<|endoftext|>", "neox": "When", "llama": "<s>", "gemma2": "<s>", "qwen2": "When"}[family]
    assert first == bos
    answer = model.tokenizer.convert_ids_to_tokens(pair.answer[0])
    assert answer == {"llama": "▁Mary", "gemma2": "▁Mary"}.get(family, "ĠMary")
    result = run(model, {"prompts": PAIRS[:1], "component": "resid_pre", "positions": "all"})
    assert result.prompts[0].clean[0] == bos  # the BOS TL prepends is not an unknown word (GPT-2)


def test_length_mismatch_shows_both_tokenizations(model):
    bad = {**PAIRS[0], "corrupted": PAIRS[0]["corrupted"].replace("Mary gave", "Mary then gave")}
    with pytest.raises(InputError) as info:
        run(model, {"prompts": [bad]})
    clean, corrupted = model.to_str_tokens(bad["clean"]), model.to_str_tokens(bad["corrupted"])
    assert info.value.field == "corrupted"
    assert f"clean has {len(clean)} {clean} and corrupted has {len(corrupted)} {corrupted}" in str(info.value)


def test_last_mlp_is_trimmed_only_where_exact(family, model):
    """Parallel blocks (GPT-NeoX) and several final positions (answers of several tokens) keep the
    full last MLP; the values above are exact either way."""
    from patchstudio.engine.forward import last_mlp_trim

    assert bool(last_mlp_trim(model)) == (family != "neox")
    assert last_mlp_trim(model, tail=2) == {}


def test_a_readout_that_misses_a_step_is_refused_not_silently_wrong(family_models, monkeypatch):
    """Gemma 2 was read without its final soft-capping. Were the engine's readout ever to differ
    from the model's own logits again (here: the cap hidden from it), run refuses."""
    from patchstudio.engine import profile

    model = family_models("gemma2")
    monkeypatch.setattr(model.cfg, "output_logits_soft_cap", -1.0)
    monkeypatch.setattr(profile, "_PROFILES", profile.weakref.WeakKeyDictionary())
    with pytest.raises(InputError) as info:
        run(model, {"prompts": PAIRS, "component": "resid_pre"})
    assert info.value.field == "model"
    assert str(info.value).startswith("Gemma2ForCausalLM is not supported: the engine reads logits as final norm -> "
                                      "unembedding -> soft-cap, which differs from this model's own logits by ")


# --- activation patching against TransformerLens -------------------------------------------------------


@pytest.mark.parametrize("key", list(R.TL_SWEEPS), ids=lambda k: f"{k[0]}-{k[1]}")
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_activation_patching_equals_transformer_lens(family, model, pairs, key, direction):
    component, positions = key
    spec = {"prompts": PAIRS, "component": component, "positions": positions, "direction": direction}
    if family == "neox" and component == "resid_mid":
        with pytest.raises(InputError, match="component 'resid_mid' does not exist in GPTNeoXForCausalLM"):
            run(model, spec)
        return
    result = run(model, spec)
    cells, ref = R.tl_patching(model, pairs, key, direction, "logit_diff")
    got = R.engine_cells(result.values, cells)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    clean, corrupted = R.baselines(model, pairs, "logit_diff")
    assert result.clean == pytest.approx(clean, abs=TOL)
    assert result.corrupted == pytest.approx(corrupted, abs=TOL)
    base = corrupted if direction == "denoise" else clean
    assert (torch.tensor(result.values) - base).abs().max() > 1e-2  # the sweep does something


@pytest.mark.parametrize("metric", ["prob", "loss", "kl"])
@pytest.mark.parametrize("key", [("head", "all"), ("resid_pre", "each")], ids=lambda k: f"{k[0]}-{k[1]}")
def test_every_metric_equals_transformer_lens(model, pairs, metric, key):
    result = run(model, {"prompts": PAIRS, "component": key[0], "positions": key[1], "metric": metric})
    cells, ref = R.tl_patching(model, pairs, key, "denoise", metric)
    assert torch.allclose(R.engine_cells(result.values, cells), ref, atol=TOL)
    clean, corrupted = R.baselines(model, pairs, metric)
    assert (result.clean, result.corrupted) == (pytest.approx(clean, abs=TOL), pytest.approx(corrupted, abs=TOL))


def test_normalized_logit_diff_is_the_affine_map_of_transformer_lens(model, pairs):
    cells, ref = R.tl_patching(model, pairs, ("head", "all"), "denoise", "logit_diff")
    clean, corrupted = R.baselines(model, pairs, "logit_diff")
    result = run(model, {"prompts": PAIRS, "component": "head", "metric": "normalized_logit_diff"})
    expected = (ref - corrupted) / (clean - corrupted)
    assert torch.allclose(R.engine_cells(result.values, cells), expected, atol=TOL)


@pytest.mark.parametrize("positions", ["all", "each"])
def test_layer_patch_equals_plain_hooks(model, pairs, positions):
    """A block's contribution: resid_post := own resid_pre + (clean resid_post - clean resid_pre)."""
    n_layers, seq = int(model.cfg.n_layers), pairs[0].clean.shape[1]
    units = [(l, p) for l in range(n_layers) for p in ([None] if positions == "all" else range(seq))]
    expected = torch.zeros(len(units))
    for pair in pairs:
        names = [f"blocks.{l}.hook_resid_{w}" for l in range(n_layers) for w in ("pre", "post")]
        cc = R.cache_of(model, pair.clean, names)
        for i, (l, p) in enumerate(units):
            delta = cc[f"blocks.{l}.hook_resid_post"] - cc[f"blocks.{l}.hook_resid_pre"]
            with torch.no_grad():
                expected[i] += float(R.score(model, pair.corrupted, pair, "logit_diff", R.layer_hooks(l, delta, seq, p)))
    result = run(model, {"prompts": PAIRS, "component": "layer", "positions": positions})
    assert torch.allclose(torch.tensor(result.values).reshape(-1), expected / len(pairs), atol=TOL)


def test_resid_mid_is_refused_for_parallel_blocks(family_models):
    """GPT-NeoX runs attention and the MLP in parallel on resid_pre: there is no stream between them
    (TransformerLens's own resid_mid sweep raises a bare KeyError there); the engine says so."""
    model = family_models("neox")
    for method in ("activation_patching", "ablation"):
        with pytest.raises(InputError) as info:
            run(model, {"method": method, "prompts": PAIRS, "component": "resid_mid", "positions": "each"})
        assert info.value.field == "component"
        assert str(info.value) == (
            "component 'resid_mid' does not exist in GPTNeoXForCausalLM: its blocks run attention and the MLP in "
            "parallel on the same input, so there is no residual stream between them to patch; use resid_pre, "
            "attn_out, mlp_out or resid_post")


# --- ablation ------------------------------------------------------------------------------------------


def _ablation_reference(model, pairs, kind, component, units, seed=7):
    """Mean over pairs of the clean run's logit difference with each unit (layer, pos, head) ablated."""
    pool = [p.clean for p in pairs] + [p.corrupted for p in pairs]
    seq = pairs[0].clean.shape[1]
    out = torch.zeros(len(units))
    names = sorted({R.hook_name(component, layer) for layer, _, _ in units})
    pool_caches = [R.cache_of(model, t, names) for t in pool]
    for u, (layer, pos, head) in enumerate(units):
        name = R.hook_name(component, layer)
        caches = [c[name] for c in pool_caches]
        for i, pair in enumerate(pairs):
            if kind == "zero":
                repl = torch.zeros_like(caches[i])
            elif kind == "mean":
                repl = torch.stack(caches).mean(0)
            else:  # one draw (the spec's draws: 1); test_ablation.py and test_reference.py average several
                repl = caches[resample_index(len(pool), i, seed=seed)]
            with torch.no_grad():
                out[u] += float(R.score(model, pair.clean, pair, "logit_diff",
                                        [(name, R.set_at(component, repl, seq, pos, head))]))
    return out / len(pairs)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_head_ablation_equals_plain_hooks(model, pairs, kind):
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    units = [(l, None, h) for l in range(n_layers) for h in range(n_heads)]
    ref = _ablation_reference(model, pairs, kind, "head", units)
    result = run(model, {"method": "ablation", "ablation": kind, "seed": 7, "draws": 1, "prompts": PAIRS, "component": "head"})
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got - result.clean).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_mlp_out_per_position_ablation_equals_plain_hooks(model, pairs, kind):
    n_layers, seq = int(model.cfg.n_layers), pairs[0].clean.shape[1]
    units = [(l, p, None) for l in range(n_layers) for p in range(seq)]
    ref = _ablation_reference(model, pairs, kind, "mlp_out", units)
    result = run(model, {"method": "ablation", "ablation": kind, "seed": 7, "draws": 1, "prompts": PAIRS, "component": "mlp_out",
                         "positions": "each"})
    assert torch.allclose(torch.tensor(result.values).reshape(-1), ref, atol=TOL)


def test_zero_ablating_a_layer_skips_it(model, pairs):
    n_layers = int(model.cfg.n_layers)
    expected = []
    for layer in range(n_layers):
        total = 0.0
        for pair in pairs:
            zero = torch.zeros(1, pair.clean.shape[1], int(model.cfg.d_model))
            with torch.no_grad():
                total += float(R.score(model, pair.clean, pair, "logit_diff",
                                       R.layer_hooks(layer, zero, pair.clean.shape[1], None)))
        expected.append(total / len(pairs))
    result = run(model, {"method": "ablation", "ablation": "zero", "prompts": PAIRS, "component": "layer"})
    assert result.values == pytest.approx(expected, abs=TOL)


# --- path patching -------------------------------------------------------------------------------------


RECEIVERS = {
    "logits": [],
    "query": [{"layer": 1, "head": 2, "input": "q"}],
    "key and value": [{"layer": 1, "head": 0, "input": "k"}, {"layer": 1, "head": 1, "input": "v"}],
}


@pytest.mark.parametrize("receivers", list(RECEIVERS))
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_plain_hooks(model, pairs, receivers, direction):
    """Includes GPT-2, whose Conv1D output projection calls .view on the frozen heads' z."""
    spec = {"method": "path_patching", "prompts": PAIRS, "direction": direction, "receivers": RECEIVERS[receivers]}
    got = torch.tensor(run(model, spec).values)
    ref = R.path_patching(model, pairs, direction, RECEIVERS[receivers])
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got - got.mean()).abs().max() > 1e-3


def test_grouped_key_value_receivers_are_the_query_heads_group(family, model):
    """A receiver names a query head; under grouped-query attention its k input is its group's key
    head, shared with the group's other query heads (so L1H3.k and L1H2.k are one receiver input),
    and the result says so."""
    spec = {"method": "path_patching", "prompts": PAIRS, "receivers": [{"layer": 1, "head": 3, "input": "k"}]}
    result = run(model, spec)
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    if n_kv in (None, model.cfg.n_heads):
        assert not any("grouped-query" in w for w in result.warnings)
        return
    sibling = run(model, {**spec, "receivers": [{"layer": 1, "head": 2, "input": "k"}]})
    assert result.values == sibling.values
    assert any("receiver L1H3.k is k head 1, shared by query heads 2-3" in w for w in result.warnings)


# --- attribution patching ------------------------------------------------------------------------------


def _attribution_reference(model, pairs, component, positions, direction, alphas=(None,)):
    """Per site: base metric + mean over alphas of d/dt metric(A_base + t (A_src - A_base) on the site);
    with alphas (node-level integrated gradients) the input embeddings are first interpolated from base to source."""
    n_layers = int(model.cfg.n_layers)
    n_heads = int(model.cfg.n_key_value_heads or model.cfg.n_heads) if component in ("head_k", "head_v") \
        else int(model.cfg.n_heads)
    out = []
    for pair in pairs:
        base, source = (pair.corrupted, pair.clean) if direction == "denoise" else (pair.clean, pair.corrupted)
        names = [R.hook_name(component, l) for l in range(n_layers)] + ["blocks.0.hook_resid_pre"]
        src, bc = R.cache_of(model, source, names), R.cache_of(model, base, names)
        with torch.no_grad():
            base_metric = float(R.score(model, base, pair, "logit_diff"))
        seq, values = base.shape[1], []
        for layer in range(n_layers):
            name = R.hook_name(component, layer)
            units = [(p, h) for p in (range(seq) if positions == "each" else [None])
                     for h in (range(n_heads) if component.startswith("head") else [None])]
            for pos, h in units:
                index = (slice(None), slice(None) if pos is None else pos) + (() if h is None else (h,))
                total = 0.0
                for alpha in alphas:
                    t = torch.zeros((), requires_grad=True)

                    def interp(act, hook, alpha=alpha):
                        e0, e1 = bc["blocks.0.hook_resid_pre"], src["blocks.0.hook_resid_pre"]
                        return e0 + alpha * (e1 - e0)

                    def site(act, hook, index=index, name=name):
                        act = act.clone()
                        act[index] = act[index] + t * (src[name][index] - bc[name][index])
                        return act

                    hooks = [(name, site)] if alpha is None else [("blocks.0.hook_resid_pre", interp), (name, site)]
                    (g,) = torch.autograd.grad(R.score(model, base, pair, "logit_diff", hooks), [t])
                    total += float(g)
                values.append(base_metric + total / len(alphas))
        out.append(torch.tensor(values))
    return torch.stack(out).mean(0)


@pytest.mark.parametrize("component, positions, direction", [
    ("head", "all", "denoise"), ("head", "all", "noise"), ("head_k", "all", "noise"), ("head_v", "all", "denoise"),
    ("resid_pre", "each", "denoise"), ("mlp_out", "all", "noise"), ("attn_out", "all", "denoise"),
])
def test_attribution_equals_autograd(model, pairs, component, positions, direction):
    result = run(model, {"method": "attribution_patching", "prompts": PAIRS, "component": component,
                         "positions": positions, "direction": direction})
    ref = _attribution_reference(model, pairs, component, positions, direction)
    got = torch.tensor(result.values).reshape(-1)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()


def test_integrated_gradients_equal_the_riemann_sum_of_autograd(model, pairs):
    steps = 3
    result = run(model, {"method": "attribution_patching", "prompts": PAIRS, "component": "head", "steps": steps})
    ref = _attribution_reference(model, pairs, "head", "all", "denoise", alphas=[(k + 0.5) / steps for k in range(steps)])
    assert torch.allclose(torch.tensor(result.values).reshape(-1), ref, atol=TOL)


# --- input influence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("baseline", ["corrupted", "zero"])
@pytest.mark.parametrize("steps", [1, 8])
def test_input_influence_equals_autograd(model, pairs, steps, baseline):
    """Gradient x (input - baseline) (1 step, the gradient at the clean input), integrated gradients
    from the baseline (8 steps); the baseline is the corrupted prompt's or zero input to block 0."""
    per_prompt = []
    for pair in pairs:
        e = R.cache_of(model, pair.clean, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"]
        b = R.cache_of(model, pair.corrupted, ["blocks.0.hook_resid_pre"])["blocks.0.hook_resid_pre"] \
            if baseline == "corrupted" else torch.zeros_like(e)
        alphas = [1.0] if steps == 1 else [(k + 0.5) / steps for k in range(steps)]
        grads = []
        for a in alphas:
            x = (b + a * (e - b)).requires_grad_(True)
            metric = R.score(model, pair.clean, pair, "logit_diff", [("blocks.0.hook_resid_pre", lambda act, hook: x)])
            grads.append(torch.autograd.grad(metric, [x])[0])
        per_prompt.append((torch.stack(grads).mean(0) * (e - b))[0].sum(-1))
    ref = torch.stack(per_prompt).mean(0)
    result = run(model, {"method": "input_influence", "prompts": PAIRS, "steps": steps, "baseline": baseline})
    assert torch.allclose(torch.tensor(result.values), ref, atol=TOL), (torch.tensor(result.values) - ref).abs().max()


# --- self-repair ---------------------------------------------------------------------------------------

TARGETS = [{"layer": 0, "head": 1}, {"layer": 0, "head": 3}]


def test_self_repair_is_exact_or_refused(family, model, pairs):
    """TE from the model's own logits; DE by hand (final norm's scale frozen, mean subtracted only
    under LayerNorm); TE = sum of every part. Gemma 2 is refused: its post-attention norm makes a
    head's direct effect depend on the others, and soft-capping makes logits nonlinear."""
    spec = {"method": "self_repair", "prompts": PAIRS, "targets": TARGETS, "compensator": {"layer": 1, "head": 0}}
    if family == "gemma2":
        with pytest.raises(InputError) as info:
            run(model, spec)
        assert info.value.field == "method"
        message = str(info.value)
        assert message.startswith("self-repair is not available for Gemma2ForCausalLM")
        assert "norm after attention" in message and "soft-capping" in message
        return
    result = run(model, spec)
    extras = result.extras
    parts = sum(sum(row) for row in result.values) + sum(extras["mlp_delta"]) + extras["ln_scale_part"]
    assert parts == pytest.approx(extras["total_effect"], abs=TOL)
    z, z1 = "blocks.0.attn.hook_z", "blocks.1.attn.hook_z"
    pool = [p.clean for p in pairs] + [p.corrupted for p in pairs]
    mean_z = torch.stack([R.cache_of(model, t, [z])[z] for t in pool]).mean(0)
    mean_z1 = torch.stack([R.cache_of(model, t, [z1])[z1] for t in pool]).mean(0)
    rms = str(model.cfg.normalization_type).startswith("RMS")
    heads = [t["head"] for t in TARGETS]
    te = de = paired = 0.0
    for pair in pairs:
        seq = pair.clean.shape[1]
        ablate = [(z, R.set_at("head", mean_z, seq, None, h)) for h in heads]
        with torch.no_grad():
            clean = float(R.score(model, pair.clean, pair, "logit_diff"))
            te += float(R.score(model, pair.clean, pair, "logit_diff", ablate)) - clean
            both = ablate + [(z1, R.set_at("head", mean_z1, seq, None, 0))]
            paired += float(R.score(model, pair.clean, pair, "logit_diff", both)) - clean
            cc = R.cache_of(model, pair.clean, [z, "ln_final.hook_scale"])
        u = (model.ln_final.w * (model.W_U[:, pair.answer[0]] - model.W_U[:, pair.wrong[0]])).detach()
        for h in heads:
            dv = ((mean_z[0, -1, h] - cc[z][0, -1, h]) @ model.W_O[0, h]).detach()
            dv = dv if rms else dv - dv.mean()
            de += float((dv / cc["ln_final.hook_scale"][0, -1, 0]) @ u)
    n = len(pairs)
    assert extras["total_effect"] == pytest.approx(te / n, abs=TOL)
    assert extras["direct_effect"] == pytest.approx(de / n, abs=TOL)
    assert extras["paired_total_effect"] == pytest.approx(paired / n, abs=TOL)
    assert abs(extras["direct_effect"]) > 1e-2


# --- answers of several tokens -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def multi_pairs(model):
    pairs = R.pairs_of(model, MULTI_TOKEN_PAIRS)
    assert all(p.multi for p in pairs) and max(len(p.answer) for p in pairs) >= 3
    return pairs


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "loss"])
@pytest.mark.parametrize("key", [("head", "all"), ("resid_pre", "each"), ("pattern", "all")],
                         ids=lambda k: f"{k[0]}-{k[1]}")
def test_multi_token_activation_patching_equals_teacher_forcing(model, multi_pairs, key, metric):
    """Each answer scored by its summed log-probability after the prompt, patched at the prompt's
    positions only; the reference runs every patch as full forward passes."""
    component, positions = key
    n_layers, seq = int(model.cfg.n_layers), multi_pairs[0].clean.shape[1]
    heads = range(int(model.cfg.n_heads)) if component in ("head", "pattern") else [None]
    units = [(l, p, h) for l in range(n_layers) for p in ([None] if positions == "all" else range(seq)) for h in heads]
    ref = torch.zeros(len(units))
    for pair in multi_pairs:
        src = R.cache_of(model, pair.clean, [R.hook_name(component, l) for l in range(n_layers)])
        for i, (l, p, h) in enumerate(units):
            name = R.hook_name(component, l)
            with torch.no_grad():
                ref[i] += float(R.score(model, pair.corrupted, pair, metric,
                                        [(name, R.set_at(component, src[name], seq, p, h))]))
    ref /= len(multi_pairs)
    result = run(model, {"prompts": MULTI_TOKEN_PAIRS, "component": component, "positions": positions, "metric": metric})
    got = R.engine_cells(result.values, [tuple(i for i in unit if i is not None) for unit in units])
    # a product of token probabilities is tiny: compare it relatively (float32 keeps ~1e-6 of it)
    rtol = 1e-4 if metric == "prob" else 0.0
    assert torch.allclose(got, ref, atol=TOL * (metric != "prob"), rtol=rtol), (got - ref).abs().max()
    clean, corrupted = R.baselines(model, multi_pairs, metric)
    assert result.clean == pytest.approx(clean, abs=TOL * (metric != "prob"), rel=rtol)
    assert result.corrupted == pytest.approx(corrupted, abs=TOL * (metric != "prob"), rel=rtol)
    assert (got - corrupted).abs().max() > 1e-3 * (abs(corrupted) if metric == "prob" else 1.0)
    assert result.prompts[0].answer == "Mary Ann"


@pytest.mark.parametrize("component", ["head", "layer"])
def test_multi_token_mean_ablation_equals_teacher_forcing(model, multi_pairs, component):
    n_layers, seq = int(model.cfg.n_layers), multi_pairs[0].clean.shape[1]
    pool = [p.clean for p in multi_pairs] + [p.corrupted for p in multi_pairs]
    ref = []
    if component == "head":
        names = [R.hook_name("head", l) for l in range(n_layers)]
        caches = [R.cache_of(model, t, names) for t in pool]
        units = [(l, None, h) for l in range(n_layers) for h in range(int(model.cfg.n_heads))]
        for l, _, h in units:
            name = R.hook_name("head", l)
            mean = torch.stack([c[name] for c in caches]).mean(0)
            with torch.no_grad():
                ref.append(sum(float(R.score(model, p.clean, p, "logit_diff", [(name, R.set_at("head", mean, seq, None, h))]))
                               for p in multi_pairs) / len(multi_pairs))
    else:
        names = [f"blocks.{l}.hook_resid_{w}" for l in range(n_layers) for w in ("pre", "post")]
        caches = [R.cache_of(model, t, names) for t in pool]
        for l in range(n_layers):
            delta = torch.stack([c[f"blocks.{l}.hook_resid_post"] - c[f"blocks.{l}.hook_resid_pre"] for c in caches]).mean(0)
            with torch.no_grad():
                ref.append(sum(float(R.score(model, p.clean, p, "logit_diff", R.layer_hooks(l, delta, seq, None)))
                               for p in multi_pairs) / len(multi_pairs))
    result = run(model, {"method": "ablation", "ablation": "mean", "prompts": MULTI_TOKEN_PAIRS, "component": component})
    assert torch.allclose(torch.tensor(result.values).reshape(-1), torch.tensor(ref), atol=TOL)


@pytest.mark.parametrize("method", ["attribution_patching", "path_patching", "input_influence"])
def test_other_methods_refuse_multi_token_answers(model, method):
    with pytest.raises(InputError) as info:
        run(model, {"method": method, "prompts": MULTI_TOKEN_PAIRS})
    assert info.value.field == "answer"
    assert str(info.value).startswith("prompt 1: answer 'Mary Ann' is ")
    assert str(info.value).endswith(
        f"{method.replace('_', ' ')} needs a single-token answer (answers of several tokens work with activation "
        "patching and ablation)")


def test_multi_token_cost_counts_each_continuation(model):
    from patchstudio.engine.run import count_patched_runs

    single = count_patched_runs(model, {"prompts": PAIRS, "component": "head"})
    assert count_patched_runs(model, {"prompts": MULTI_TOKEN_PAIRS, "component": "head"}) == 2 * single
    assert count_patched_runs(model, {"prompts": MULTI_TOKEN_PAIRS, "component": "head", "metric": "prob"}) == single
