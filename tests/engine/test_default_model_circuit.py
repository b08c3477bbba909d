"""The default model's IOI and induction circuit, as written up in docs/default-model-circuit.md.

Pins each claim of the write-up on the same generated prompts (16 pairs, template 0, seed 7). The
mechanism claims are measured with plain TransformerLens hooks (hook names, caches, einsums), not
with the engine, so a bug in the engine cannot make them pass; the engine's own numbers (the specs
the write-up gives) are checked against them where they measure the same thing."""

from __future__ import annotations

import pytest
import torch

from patchstudio.engine.run import run
from patchstudio.models.prompts import induction_pairs, ioi_pairs

IOI = [p.to_dict() for p in ioi_pairs(16, seed=7, template=0)]
INDUCTION = [p.to_dict() for p in induction_pairs(16, seed=7, length=8)]
NORM = "normalized_logit_diff"
S_SUPPRESSORS = [(2, 2), (2, 7), (2, 1)]


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("default")


def _token(model, word: str) -> int:
    return int(model.to_tokens(word, prepend_bos=False)[0, 0])


class Runs:
    """Clean and corrupted IOI runs with caches, the name positions, and hooked reruns, by hand."""

    def __init__(self, model, pairs):
        self.model = model
        self.clean = model.to_tokens([p["clean"] for p in pairs])
        self.corrupted = model.to_tokens([p["corrupted"] for p in pairs])
        self.answer = torch.tensor([_token(model, p["answer"]) for p in pairs])
        self.wrong = torch.tensor([_token(model, p["wrong"]) for p in pairs])
        self.rows = torch.arange(len(pairs))
        self.end = self.clean.shape[1] - 1
        where = lambda b, t: (self.clean[b] == t).nonzero().flatten().tolist()  # noqa: E731
        self.io = torch.tensor([where(b, self.answer[b])[0] for b in range(len(pairs))])
        self.s1 = torch.tensor([where(b, self.wrong[b])[0] for b in range(len(pairs))])
        self.s2 = torch.tensor([where(b, self.wrong[b])[1] for b in range(len(pairs))])
        logits, self.cache = model.run_with_cache(self.clean)
        corrupted_logits, self.ccache = model.run_with_cache(self.corrupted)
        self.ld_clean, self.ld_corrupted = self.ld(logits).mean(), self.ld(corrupted_logits).mean()

    def ld(self, logits):
        last = logits[:, -1]
        return last[self.rows, self.answer] - last[self.rows, self.wrong]

    def removed(self, hooks) -> float:
        """Share of the clean−corrupted gap a hooked clean run loses (0: none, 1: all)."""
        patched = self.ld(self.model.run_with_hooks(self.clean, fwd_hooks=hooks)).mean()
        return float((self.ld_clean - patched) / (self.ld_clean - self.ld_corrupted))

    def removed_per_prompt(self, hooks) -> torch.Tensor:
        """The same per prompt, each as a share of its own clean−corrupted gap."""
        with torch.no_grad():
            clean, corrupted = self.ld(self.model(self.clean)), self.ld(self.model(self.corrupted))
            patched = self.ld(self.model.run_with_hooks(self.clean, fwd_hooks=hooks))
        return (clean - patched) / (clean - corrupted)

    def head_out(self, cache, layer, head):  # [batch, pos, d_model]: the head's write to the residual stream
        return torch.einsum("bpd,dm->bpm", cache[f"blocks.{layer}.attn.hook_z"][:, :, head], self.model.W_O[layer, head])

    def corrupt_z(self, layer, head, pos=None):
        name = f"blocks.{layer}.attn.hook_z"

        def hook(act, hook=None):
            act = act.clone()
            where = slice(None) if pos is None else pos
            act[:, where, head] = self.ccache[name][:, where, head]
            return act

        return (name, hook)

    def freeze(self, name):
        return (name, lambda act, hook=None: self.cache[name].clone())

    def dla(self, vector, unembed=None):
        """Direct logit attribution of a residual-stream write at END: through the final LayerNorm's
        (clean) scale and weight onto W_U[answer] − W_U[wrong] (or the given unembedding columns)."""
        m = self.model
        columns = (m.W_U[:, self.answer] - m.W_U[:, self.wrong]).T if unembed is None else unembed
        centred = vector - vector.mean(-1, keepdim=True)
        return ((centred / self.cache["ln_final.hook_scale"][:, self.end]) * m.ln_final.w * columns).sum(-1)


@pytest.fixture(scope="module")
def ioi(model):
    return Runs(model, IOI)


def _top(values, k, base=0.0):
    v = torch.tensor(values) - base
    flat = v.abs().reshape(-1).argsort(descending=True)[:k]
    n_heads = v.shape[1]
    return [f"L{int(i) // n_heads}H{int(i) % n_heads}" for i in flat]


def test_three_heads_carry_the_ioi_signal(model):
    denoise = run(model, {"prompts": IOI, "component": "head", "metric": NORM})
    assert _top(denoise.values, 3) == ["L0H2", "L2H2", "L2H7"]
    assert denoise.values[0][2] == pytest.approx(0.40, abs=0.02)
    assert denoise.values[2][2] == pytest.approx(0.23, abs=0.02) and denoise.values[2][7] == pytest.approx(0.14, abs=0.02)
    # through their values, not their queries or keys
    values = run(model, {"prompts": IOI, "component": "head_v", "metric": NORM})
    queries = run(model, {"prompts": IOI, "component": "head_q", "metric": NORM})
    assert values.values[2][2] == pytest.approx(denoise.values[2][2], abs=0.02)
    assert max(abs(v) for row in queries.values for v in row) < 0.05


def test_layer_two_heads_attend_from_end_to_s2_not_to_io(ioi):
    r = ioi
    for layer, head in S_SUPPRESSORS:
        pattern = r.cache[f"blocks.{layer}.attn.hook_pattern"][:, head, r.end]  # [batch, key]
        assert pattern[r.rows, r.s2].mean() > 0.93, (layer, head)
        assert pattern[r.rows, r.io].mean() < 0.01 and pattern[r.rows, r.s1].mean() < 0.01
    # the heads that do look at IO (layers 1-3) split their attention between IO and S1
    l1 = r.cache["blocks.1.attn.hook_pattern"][:, :, r.end]
    assert (l1[r.rows, :, r.io].mean(0) > 0.3).all() and (l1[r.rows, :, r.s1].mean(0) > 0.3).all()


def test_they_push_the_s_logit_down_rather_than_copy_io(ioi):
    r, m = ioi, ioi.model
    centred_unembed = m.W_U - m.W_U.mean(1, keepdim=True)  # a push on every logit alike is no push
    expected_s = {(2, 2): -1.19, (2, 7): -0.79, (2, 1): -0.32}
    for (layer, head), s_push in expected_s.items():
        out = r.head_out(r.cache, layer, head)[:, r.end]
        onto_s = r.dla(out, centred_unembed[:, r.wrong].T).mean()
        onto_io = r.dla(out, centred_unembed[:, r.answer].T).mean()
        assert float(onto_s) == pytest.approx(s_push, abs=0.03)
        assert abs(float(onto_io)) < 0.15 * abs(float(onto_s))
        # and what they write comes from S2: the head's output split by the position it reads
        v = r.cache[f"blocks.{layer}.attn.hook_v"][:, :, head]
        pattern = r.cache[f"blocks.{layer}.attn.hook_pattern"][:, head, r.end]
        per_source = torch.einsum("bk,bkd,dm->bkm", pattern, v, m.W_O[layer, head])
        total = r.dla(per_source.sum(1)).mean()
        from_s2 = r.dla(per_source[r.rows, r.s2]).mean()
        assert float(from_s2) == pytest.approx(float(total), rel=0.02)


def test_direct_logit_attribution_adds_up_and_the_mlps_carry_most_of_it(ioi):
    r, m = ioi, ioi.model
    end = r.end
    parts = {"embed": r.dla(r.cache["hook_embed"][:, end] + r.cache["hook_pos_embed"][:, end])}
    for layer in range(m.cfg.n_layers):
        z = r.cache[f"blocks.{layer}.attn.hook_z"][:, end]
        out = torch.einsum("bhd,hdm->bhm", z, m.W_O[layer])
        for head in range(m.cfg.n_heads):
            parts[f"L{layer}H{head}"] = r.dla(out[:, head])
        parts[f"b_O{layer}"] = r.dla(m.b_O[layer].expand(len(IOI), -1))
        parts[f"MLP{layer}"] = r.dla(r.cache[f"blocks.{layer}.hook_mlp_out"][:, end])
    columns = (m.W_U[:, r.answer] - m.W_U[:, r.wrong]).T
    constant = (m.ln_final.b * columns).sum(-1) + m.b_U[r.answer] - m.b_U[r.wrong]
    assert float((sum(parts.values()) + constant).mean()) == pytest.approx(float(r.ld_clean), abs=1e-3)
    share = {k: float(v.mean() / r.ld_clean) for k, v in parts.items()}
    assert share["MLP1"] + share["MLP2"] + share["MLP3"] == pytest.approx(0.62, abs=0.02)
    assert (share["MLP3"], share["MLP2"], share["MLP1"]) == pytest.approx((0.29, 0.20, 0.13), abs=0.01)
    assert (share["L2H2"], share["L2H7"], share["L2H1"]) == pytest.approx((0.136, 0.085, 0.032), abs=0.005)
    assert abs(share["L0H2"]) < 0.01  # the largest patching effect, and no direct effect at all
    assert max(share.items(), key=lambda kv: abs(kv[1]))[0] == "MLP3"


@pytest.mark.parametrize(
    "layer, head, patched, direct, mlp_share",
    [(2, 2, 0.223, 0.107, 0.52), (2, 7, 0.141, 0.072, 0.49), (2, 1, 0.058, 0.028, 0.52)],
)
def test_half_of_each_s_suppressor_effect_runs_through_mlp2_and_mlp3(ioi, model, layer, head, patched, direct, mlp_share):
    r = ioi
    full = r.removed([r.corrupt_z(layer, head)])  # noising: the corrupted head in the clean run
    delta = (r.head_out(r.ccache, layer, head) - r.head_out(r.cache, layer, head))[:, r.end]

    def add_to_final_residual(act, hook=None):
        act = act.clone()
        act[:, r.end] += delta
        return act

    only_direct = r.removed([("blocks.3.hook_resid_post", add_to_final_residual)])  # final LayerNorm recomputed
    later_heads = [r.freeze(f"blocks.{l}.attn.hook_z") for l in range(layer + 1, 4)]
    through_mlps = r.removed([r.corrupt_z(layer, head), *later_heads])  # later heads frozen, MLPs recomputed
    everything_frozen = r.removed([r.corrupt_z(layer, head), *later_heads,
                                   *[r.freeze(f"blocks.{l}.hook_mlp_out") for l in range(layer, 4)]])
    assert full == pytest.approx(patched, abs=0.005) and only_direct == pytest.approx(direct, abs=0.005)
    assert through_mlps == pytest.approx(full, abs=0.005)  # nothing through the layer-3 heads
    assert everything_frozen == pytest.approx(only_direct, abs=0.005)
    assert 1 - only_direct / full == pytest.approx(mlp_share, abs=0.03)  # the part through the MLPs
    for mlp in (2, 3):  # both MLPs carry part of it
        lost = through_mlps - r.removed([r.corrupt_z(layer, head), *later_heads, r.freeze(f"blocks.{mlp}.hook_mlp_out")])
        assert lost > 0.2 * (full - only_direct)
    # the engine's methods measure the same things (direct effect: final LayerNorm scale frozen, so a bit more)
    path = run(model, {"method": "path_patching", "prompts": IOI, "direction": "noise", "metric": NORM})
    assert 1 - path.values[layer][head] == pytest.approx(through_mlps, abs=0.005)
    direct_effect = run(model, {"method": "direct_effect", "prompts": IOI, "direction": "noise", "metric": NORM})
    assert 1 - direct_effect.values[layer][head] == pytest.approx(only_direct, abs=0.02)


def test_l0h2_acts_at_end_through_the_mlps(ioi):
    r = ioi
    pattern = r.cache["blocks.0.attn.hook_pattern"][:, 2, r.end]
    assert pattern[r.rows, r.s2].mean() > 0.85  # at END it reads the repeated name
    full = r.removed([r.corrupt_z(0, 2)])
    at_end = r.removed([r.corrupt_z(0, 2, pos=r.end)])
    at_s2 = r.removed([r.corrupt_z(0, 2, pos=10)])
    assert full == pytest.approx(0.388, abs=0.005)
    assert at_end == pytest.approx(0.341, abs=0.005) and abs(at_s2) < 0.03  # its effect is at END
    heads = [r.freeze(f"blocks.{l}.attn.hook_z") for l in range(1, 4)]
    mlps = [r.freeze(f"blocks.{l}.hook_mlp_out") for l in range(0, 4)]
    assert abs(r.removed([r.corrupt_z(0, 2), *heads, *mlps])) < 0.005  # no direct effect
    assert r.removed([r.corrupt_z(0, 2), *mlps]) < 0.01  # later heads alone (MLPs frozen): nothing
    assert r.removed([r.corrupt_z(0, 2), *heads]) == pytest.approx(0.223, abs=0.005)  # MLPs alone: most
    assert quartiles(r.removed_per_prompt([r.corrupt_z(0, 2), *heads])) == pytest.approx([0.21, 0.24, 0.27], abs=0.006)


def quartiles(x: torch.Tensor) -> list[float]:
    return torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()


def test_l0h2s_mlp_path_runs_through_mlp0_into_the_later_mlps(ioi):
    """With the later heads frozen: which MLPs, recomputed, carry L0H2's effect. MLP0 is needed (freeze
    it and 0.029 of 0.223 is left) but carries little alone (0.030): the later MLPs read what it writes."""
    r = ioi
    heads = [r.freeze(f"blocks.{l}.attn.hook_z") for l in range(1, 4)]

    def recomputed(*mlps):  # only these MLPs recomputed, the others frozen at the clean run
        return [r.corrupt_z(0, 2), *heads, *[r.freeze(f"blocks.{l}.hook_mlp_out") for l in range(4) if l not in mlps]]

    assert r.removed(recomputed(0, 1, 2, 3)) == pytest.approx(0.223, abs=0.005)
    assert r.removed(recomputed(1, 2, 3)) == pytest.approx(0.029, abs=0.005)  # MLP0 frozen
    assert r.removed(recomputed(0)) == pytest.approx(0.030, abs=0.005)  # MLP0 alone
    assert quartiles(r.removed_per_prompt(recomputed(0))) == pytest.approx([0.01, 0.03, 0.04], abs=0.006)
    assert (r.removed(recomputed(0, 1)), r.removed(recomputed(0, 1, 2))) == pytest.approx((0.100, 0.151), abs=0.005)
    assert max(r.removed(recomputed(l)) for l in (1, 2, 3)) == pytest.approx(0.013, abs=0.005)
    assert r.removed([r.corrupt_z(0, 2), r.freeze("blocks.0.hook_mlp_out")]) == pytest.approx(0.051, abs=0.005)


def test_mlps_at_end_carry_the_gap(ioi):
    r = ioi
    removed = []
    for layer in range(4):
        name = f"blocks.{layer}.hook_mlp_out"
        removed.append(r.removed([(name, lambda act, hook=None, n=name: torch.cat([act[:, :r.end], r.ccache[n][:, r.end:]], 1))]))
    assert removed == pytest.approx([0.336, 0.186, 0.229, 0.269], abs=0.005)


def test_l0h0_and_l0h1_are_previous_token_heads_that_back_each_other_up(model, ioi):
    prev = lambda pattern: torch.stack([pattern[:, :, q, q - 1] for q in range(1, pattern.shape[2])]).mean((0, 1))  # noqa: E731
    on_ioi = prev(ioi.cache["blocks.0.attn.hook_pattern"])
    tokens = model.to_tokens([p["clean"] for p in INDUCTION])
    _, cache = model.run_with_cache(tokens)
    on_induction = prev(cache["blocks.0.attn.hook_pattern"])
    assert on_ioi[:2].tolist() == pytest.approx([0.82, 0.69], abs=0.02)
    assert on_induction[:2].tolist() == pytest.approx([0.91, 0.79], abs=0.02)
    assert on_ioi[2:].max() < 0.4 and on_induction[2:].max() < 0.4
    # on the induction task, mean-ablating both (their mean over 64 other induction prompts, not the
    # evaluation prompts) removes far more than the sum of each alone
    reference = model.to_tokens([p.clean for p in induction_pairs(64, seed=8, length=8)])
    _, ref_cache = model.run_with_cache(reference, names_filter=["blocks.0.attn.hook_z"])
    means = ref_cache["blocks.0.attn.hook_z"].mean(0, keepdim=True)
    answer = torch.tensor([_token(model, p["answer"]) for p in INDUCTION])
    wrong = torch.tensor([_token(model, p["wrong"]) for p in INDUCTION])
    rows = torch.arange(len(INDUCTION))
    ld = lambda logits: logits[rows, -1, answer] - logits[rows, -1, wrong]  # noqa: E731
    with torch.no_grad():
        clean = ld(model(tokens))
        corrupted = ld(model(model.to_tokens([p["corrupted"] for p in INDUCTION])))

    def removed(heads) -> tuple[float, torch.Tensor]:
        """Share of the mean gap removed, and each prompt's share of its own gap."""
        def hook(act, hook=None):
            act = act.clone()
            act[:, :, heads] = means[:, :, heads]
            return act

        with torch.no_grad():
            patched = ld(model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", hook)]))
        return float((clean.mean() - patched.mean()) / (clean.mean() - corrupted.mean())), (clean - patched) / (clean - corrupted)

    (l0h0, l0h0_each), (l0h1, _), (both, both_each) = removed([0]), removed([1]), removed([0, 1])
    assert (l0h0, l0h1, both) == pytest.approx((0.039, 0.003, 0.176), abs=0.005)
    assert both > 4 * (l0h0 + l0h1)
    assert quartiles(both_each) == pytest.approx([0.02, 0.20, 0.31], abs=0.006)
    assert quartiles(l0h0_each) == pytest.approx([-0.02, 0.03, 0.06], abs=0.006)


def test_layer_one_holds_the_induction_heads(model):
    """The stripe over all 16 prompts (the write-up once quoted prompt 0's as if it were the mean)."""
    tokens = model.to_tokens([p["clean"] for p in INDUCTION])
    _, cache = model.run_with_cache(tokens)
    length, seq = 8, tokens.shape[1]
    stripe = torch.stack([
        torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, :, q, q - (length - 1)] for q in range(length + 1, seq)]).mean(0)
        for l in range(model.cfg.n_layers)
    ])  # [layer, prompt, head]: attention to the token after the previous occurrence, over the repeated positions
    mean = stripe.mean(1)
    assert mean[1].tolist() == pytest.approx([0.74, 0.85, 0.53, 0.82, 0.85, 0.82, 0.75, 0.83], abs=0.006)
    assert (mean[1] > 0.7).sum() == 7
    lowest, highest = stripe[1].min(0).values, stripe[1].max(0).values  # each head's lowest and highest prompt
    assert (float(lowest.min()), float(lowest.max())) == pytest.approx((0.40, 0.78), abs=0.006)
    assert (float(highest.min()), float(highest.max())) == pytest.approx((0.70, 0.96), abs=0.006)
    assert mean[[0, 2, 3]].max() < 0.13 and stripe[[0, 2, 3]].max() < 0.22
    patched = run(model, {"prompts": INDUCTION, "component": "head", "metric": NORM})
    assert sum(patched.values[1]) > 0.5  # the layer-1 heads together restore most of the behaviour


@pytest.mark.parametrize(
    ("layer", "head", "spec_id", "te", "de"),
    [(2, 2, "a7b264363d69b1e5", -2.60, -1.30), (2, 7, "ce172702c4d9a6dc", -1.59, -0.86),
     (2, 1, "33480e7ab369221f", -0.71, -0.32), (0, 2, "0a94d54185987e10", -2.64, 0.02)],
)
def test_mean_ablation_costs_more_than_each_heads_direct_effect(model, layer, head, spec_id, te, de):
    """The write-up's self-repair row: single mean ablation drops the logit difference by about twice
    the head's direct effect (for L2H2 the rest is mostly MLP2 and MLP3, its own indirect path, with
    any response; no head repairs it), and L0H2, with no direct effect at all, costs as much as L2H2."""
    result = run(model, {"method": "self_repair", "prompts": IOI, "targets": [{"layer": layer, "head": head}]})
    assert result.id == spec_id
    x = result.extras
    assert x["total_effect"] == pytest.approx(te, abs=0.01) and x["direct_effect"] == pytest.approx(de, abs=0.01)
    assert abs(x["total_effect"]) > abs(x["direct_effect"])  # the indirect path (MLP2, MLP3) adds to the drop
    if (layer, head) == (2, 2):
        assert [round(v, 2) for v in x["mlp_delta"]] == [0.0, 0.0, -0.57, -0.69]
