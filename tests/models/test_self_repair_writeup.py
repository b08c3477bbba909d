"""docs/self-repair.md, pinned: the Hydra effect on the hydra model, on the "Self-repair view"
example's prompts (16 IOI pairs, template 0, seed 7; L2H2 mean-ablated).

The engine's figures (spec ids, TE, DE, the compensator's growth, the paired ablation) are checked
to the write-up's precision; the mechanism (L3H4's attention moves from BOS to S2 when L2H2 is
gone, and its direct effect rises), the graded response, the spread over prompts and over the 24
training templates, and resample ablation are measured with plain TransformerLens hooks and a
reference set of their own, so neither a bug in the engine nor the engine's choice of reference
prompts can make them pass."""

from __future__ import annotations

import random

import pytest
import torch

from patchstudio.engine.run import run
from patchstudio.models.default_model import HYDRA_DIR, WEIGHTS_FILE
from patchstudio.models.prompts import ioi_pairs
from patchstudio.web.forms import DEFAULT_FORM, spec_from_form
from patchstudio.web.presets import PRESETS

pytestmark = pytest.mark.skipif(not (HYDRA_DIR / WEIGHTS_FILE).exists(), reason="the hydra model is not shipped")

PAIRS = ioi_pairs(16, seed=7, template=0)
TARGET, BACKUP = (2, 2), (3, 4)
# the write-up's table
SINGLE_ID, PAIRED_ID, DEFAULT_ID = "1d4a927b978af484", "97cdb9ff30e8465c", "a7b264363d69b1e5"
TE, DE, GROWTH, BACKUP_TE, PAIRED_TE, EXCESS = -0.780, -1.252, 1.088, -0.619, -3.068, -1.669
DEFAULT_TE, DEFAULT_DE = -2.60, -1.30


@pytest.fixture(scope="module")
def model():
    from patchstudio.models.registry import load_model

    return load_model("hydra")


@pytest.fixture(scope="module")
def spec():
    return spec_from_form({**DEFAULT_FORM, **PRESETS["self-repair"].form}).spec.model_dump()


@pytest.fixture(scope="module")
def single(model, spec):
    return run(model, spec)


@pytest.fixture(scope="module")
def paired(model, spec):
    return run(model, {**spec, "compensator": {"layer": BACKUP[0], "head": BACKUP[1]}})


def test_single_ablation_understates_l2h2(single):
    """TE is smaller than DE here: the network compensates (on the default model TE is about twice DE)."""
    assert single.id == SINGLE_ID
    x = single.extras
    assert x["total_effect"] == pytest.approx(TE, abs=0.01)
    assert x["direct_effect"] == pytest.approx(DE, abs=0.01)
    assert abs(x["total_effect"]) < abs(x["direct_effect"])


def test_l3h4_is_the_top_compensator(single):
    from patchstudio import analysis

    top = analysis.top_compensators(single)[0]
    assert top.name == "L3H4" and top.head is not None
    assert top.change == pytest.approx(GROWTH, abs=0.01)
    assert top.change >= 0.3 * abs(single.extras["direct_effect"])  # the bar, on the page's numbers


def test_the_paired_ablation_costs_far_more_than_the_two_alone(single, paired):
    assert paired.id == PAIRED_ID
    x = paired.extras
    assert x["total_effect"] == pytest.approx(single.extras["total_effect"], abs=1e-4)  # the same single run
    assert x["compensator_total_effect"] == pytest.approx(BACKUP_TE, abs=0.01)
    assert x["paired_total_effect"] == pytest.approx(PAIRED_TE, abs=0.01)
    assert x["paired_excess"] == pytest.approx(EXCESS, abs=0.01)
    assert x["paired_excess"] == pytest.approx(
        x["paired_total_effect"] - x["total_effect"] - x["compensator_total_effect"], abs=1e-5)
    assert -x["paired_excess"] >= 0.25 * abs(x["direct_effect"])  # clearly more than the sum


def test_the_same_experiment_on_the_default_model_costs_twice_the_direct_effect(spec):
    from patchstudio.models.registry import load_model

    r = run(load_model("default"), {**spec, "model": "default"})
    assert r.id == DEFAULT_ID
    assert r.extras["total_effect"] == pytest.approx(DEFAULT_TE, abs=0.01)
    assert r.extras["direct_effect"] == pytest.approx(DEFAULT_DE, abs=0.01)


def test_l3h4_moves_its_attention_from_bos_to_s2_when_l2h2_is_gone(model):
    """By hand: L2H2's hook_z replaced by its mean over 64 other template-0 prompts (seed 8)."""
    tid = model.tokenizer.convert_tokens_to_ids
    tokens = model.to_tokens([p.clean for p in PAIRS])
    reference = model.to_tokens([p.clean for p in ioi_pairs(64, seed=8, template=0)])
    z = f"blocks.{TARGET[0]}.attn.hook_z"
    _, ref_cache = model.run_with_cache(reference, names_filter=[z])
    mean = ref_cache[z][:, :, TARGET[1]].mean(0)

    def ablate(act, hook):
        act = act.clone()
        act[:, :, TARGET[1]] = mean
        return act

    layer, head = BACKUP
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z", "ln_final.hook_scale"]
    _, clean = model.run_with_cache(tokens, names_filter=names)
    with model.hooks(fwd_hooks=[(z, ablate)]):
        _, ablated = model.run_with_cache(tokens, names_filter=names)
    rows = torch.arange(len(PAIRS))
    answer = torch.tensor([tid(p.answer) for p in PAIRS])
    wrong = torch.tensor([tid(p.wrong) for p in PAIRS])
    s2 = torch.tensor([(tokens[b] == wrong[b]).nonzero().flatten()[1] for b in rows])
    u = (model.W_U[:, answer] - model.W_U[:, wrong]).T * model.ln_final.w

    def read(cache):
        pattern = cache[names[0]][:, head, -1]  # END's attention [batch, key]
        out = cache[names[1]][:, -1, head] @ model.W_O[layer, head]
        out = out - out.mean(-1, keepdim=True)
        de = ((out / clean["ln_final.hook_scale"][:, -1]) * u).sum(-1)  # at the clean LN scale
        return float(pattern[rows, s2].mean()), float(pattern[:, 0].mean()), float(de.mean())

    with torch.no_grad():
        (s2_clean, bos_clean, de_clean), (s2_abl, bos_abl, de_abl) = read(clean), read(ablated)
    assert s2_abl > 1.6 * s2_clean and bos_abl < 0.7 * bos_clean
    assert de_abl - de_clean >= 0.3 * abs(DE)


# --- the backup's response, typical values and resample ablation, by plain hooks -------------------------
# Every figure below is measured here with TransformerLens hooks and a reference set of the test's own
# (64 other prompts of the same template, seed 8): mean ablation replaces L2H2's hook_z at every position
# by its reference mean; resample ablation by one reference prompt's, RESAMPLE_DRAWS seeded draws per
# prompt averaged; the graded probe scales L2H2's hook_z at the final position only. DE and growth are
# read at the clean final LayerNorm scale, as the engine does.

ALPHAS = (0.75, 0.5, 0.25, 0.0)
RESAMPLE_DRAWS = 8
N_PER_TEMPLATE = 16


class Hooked:
    """One template's prompts: the clean run, the heads' reference values, and hooked reruns."""

    def __init__(self, model, pairs, reference):
        tid = model.tokenizer.convert_tokens_to_ids
        self.model, self.tokens = model, model.to_tokens([p.clean for p in pairs])
        answer, wrong = torch.tensor([tid(p.answer) for p in pairs]), torch.tensor([tid(p.wrong) for p in pairs])
        self.rows, self.answer, self.wrong = torch.arange(len(pairs)), answer, wrong
        self.u = (model.W_U[:, answer] - model.W_U[:, wrong]).T * model.ln_final.w
        n_layers = model.cfg.n_layers
        self.names = [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
        self.names += [f"blocks.{l}.hook_mlp_out" for l in range(n_layers)] + ["ln_final.hook_scale"]
        logits, self.clean = model.run_with_cache(self.tokens, names_filter=self.names)
        self.ld = self._ld(logits)
        self.scale = self.clean["ln_final.hook_scale"][:, -1]
        _, ref = model.run_with_cache(model.to_tokens([p.clean for p in reference]), names_filter=self.names[:n_layers])
        self.reference = {l: ref[f"blocks.{l}.attn.hook_z"] for l in range(n_layers)}  # [reference, pos, head, d_head]

    def _ld(self, logits):
        return logits[self.rows, -1, self.answer] - logits[self.rows, -1, self.wrong]

    def _direct(self, vector):  # [batch, d_model] at END -> its direct effect on the logit diff
        centred = vector - vector.mean(-1, keepdim=True)
        return ((centred / self.scale) * self.u).sum(-1)

    def _head(self, cache, layer, head):
        return self._direct(cache[f"blocks.{layer}.attn.hook_z"][:, -1, head] @ self.model.W_O[layer, head])

    @torch.no_grad()
    def intervene(self, replace, head=TARGET) -> dict[str, torch.Tensor]:
        """The head's hook_z [batch, pos, d_head] -> replace(it): per prompt TE, L2H2's DE, L3H4's growth
        (changes of their direct effects) and each MLP's change of direct effect [layer, batch]."""

        def hook(act, hook=None):
            act = act.clone()
            act[:, :, head[1]] = replace(act[:, :, head[1]])
            return act

        with self.model.hooks(fwd_hooks=[(f"blocks.{head[0]}.attn.hook_z", hook)]):
            logits, cache = self.model.run_with_cache(self.tokens, names_filter=self.names)
        change = lambda read: read(cache) - read(self.clean)  # noqa: E731
        return {"te": self._ld(logits) - self.ld, "de": change(lambda c: self._head(c, *TARGET)),
                "growth": change(lambda c: self._head(c, *BACKUP)),
                "mlp": torch.stack([change(lambda c, l=l: self._direct(c[f"blocks.{l}.hook_mlp_out"][:, -1]))
                                    for l in range(self.model.cfg.n_layers)])}  # fmt: skip

    def mean_ablated(self, head=TARGET):
        mean = self.reference[head[0]][:, :, head[1]].mean(0)
        return self.intervene(lambda z: mean.expand_as(z), head)

    def scaled(self, alpha):
        def replace(z):
            z = z.clone()
            z[:, -1] *= alpha
            return z

        return self.intervene(replace)

    def resampled(self):
        pool = self.reference[TARGET[0]][:, :, TARGET[1]]
        draws = []
        for k in range(RESAMPLE_DRAWS):
            rows = torch.tensor([random.Random(1_000 * k + i).randrange(len(pool)) for i in self.rows.tolist()])
            draws.append(self.intervene(lambda z, rows=rows: pool[rows]))
        return {key: torch.stack([d[key] for d in draws]).mean(0) for key in draws[0]}


def quartiles(x: torch.Tensor) -> list[float]:
    return torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()


@pytest.fixture(scope="module")
def example(model):
    with torch.no_grad():
        return Hooked(model, PAIRS, ioi_pairs(64, seed=8, template=0))


@pytest.fixture(scope="module")
def templates(model, one_thread):
    """Each of the 24 training templates: 16 prompts (seed 7, as the example's), mean and resample ablated."""
    from patchstudio.models.prompts import TRAIN_TEMPLATES

    out = {}
    with torch.no_grad():
        for t in TRAIN_TEMPLATES:
            h = Hooked(model, ioi_pairs(N_PER_TEMPLATE, seed=7, template=t), ioi_pairs(64, seed=8, template=t))
            out[t] = {"mean": h.mean_ablated(), "resample": h.resampled()}
    return out


def _q(x, places=0.006):
    return pytest.approx(x, abs=places)


def test_the_example_by_hand_with_its_spread(example):
    x = example.mean_ablated()
    assert [float(x[k].mean()) for k in ("te", "de", "growth")] == _q([-0.81, -1.26, 1.09])
    share = x["growth"] / x["de"].abs()
    assert quartiles(share) == _q([0.47, 0.60, 0.95])
    assert (float(share.min()), float(share.max())) == _q((0.09, 1.86))


def test_the_backup_responds_in_proportion_to_what_l2h2_loses(example):
    """L2H2's final-position output scaled by alpha: the write-up's "Graded, not switched" table."""
    table = {0.75: (-0.32, 0.27, [0.37, 0.78, 0.94]), 0.5: (-0.63, 0.58, [0.42, 0.79, 0.95]),
             0.25: (-0.95, 0.87, [0.49, 0.78, 0.94]), 0.0: (-1.27, 1.09, [0.46, 0.73, 0.91])}  # fmt: skip
    full = example.scaled(0.0)["growth"].mean()
    for alpha, (lost, growth, ratio) in table.items():
        x = example.scaled(alpha)
        assert float(x["de"].mean()) == _q(lost) and float(x["growth"].mean()) == _q(growth)
        assert quartiles(x["growth"] / x["de"].abs()) == _q(ratio)
    assert float(example.scaled(0.75)["growth"].mean() / full) > 0.2  # a quarter removed: a quarter of the response
    assert torch.equal(example.scaled(1.0)["growth"], torch.zeros(len(PAIRS)))  # the probe changes nothing at 1


def test_l3h4_writes_while_l2h2_is_there(example):
    x = example.mean_ablated(BACKUP)
    assert float(x["growth"].mean()) == _q(-0.43)  # its own direct effect, lost when it is ablated
    assert quartiles(-x["growth"]) == _q([0.24, 0.46, 0.72])
    assert float(x["te"].mean()) == _q(-0.64)


def test_the_example_under_resample_ablation(example):
    x = example.resampled()
    assert [float(x[k].mean()) for k in ("te", "de", "growth")] == _q([-1.19, -1.28, 0.92])
    assert x["mlp"].mean(1)[2:].tolist() == _q([-0.57, -0.17])
    assert example.mean_ablated()["mlp"].mean(1)[2:].tolist() == _q([-0.54, -0.08])


def test_typical_values_across_the_training_templates(templates):
    """The write-up's table: per template (ratios of the means) and per prompt (384 prompts)."""
    assert len(templates) == 24
    expected = {  # kind: (growth / |DE| per template: quartiles, range; per prompt: quartiles), then TE / DE
        "mean": ([0.77, 0.86, 0.90], (0.56, 1.15), [0.37, 0.70, 1.07], [0.58, 0.64, 0.78], (0.35, 1.04), [0.36, 0.81, 1.31]),
        "resample": ([0.65, 0.71, 0.74], (0.45, 0.97), [0.19, 0.57, 0.94], [0.89, 0.97, 1.04], (0.73, 1.31), [0.59, 1.12, 1.73]),
    }
    for kind, (share_q, share_range, share_pp, ratio_q, ratio_range, ratio_pp) in expected.items():
        runs = [t[kind] for t in templates.values()]
        share = torch.tensor([float(r["growth"].mean() / r["de"].mean().abs()) for r in runs])
        ratio = torch.tensor([float(r["te"].mean() / r["de"].mean()) for r in runs])
        pooled = {k: torch.cat([r[k] for r in runs]) for k in ("te", "de", "growth")}
        assert quartiles(share) == _q(share_q) and (float(share.min()), float(share.max())) == _q(share_range), kind
        assert quartiles(ratio) == _q(ratio_q) and (float(ratio.min()), float(ratio.max())) == _q(ratio_range), kind
        assert quartiles(pooled["growth"] / pooled["de"].abs()) == _q(share_pp), kind
        assert quartiles(pooled["te"] / pooled["de"]) == _q(ratio_pp), kind


def test_the_cards_measurement_agrees_with_these_hooks(model, example):
    """hydra_report.backup_effects (what the card's figures come from) equals the plain hooks above,
    prompt by prompt, for mean ablation and the graded probe."""
    from patchstudio.models.hydra_report import effects_on

    x = effects_on(model, [(PAIRS, ioi_pairs(64, seed=8, template=0))], TARGET, BACKUP, draws=1)
    mine = example.mean_ablated()
    for theirs, key in (("total_effect", "te"), ("direct_effect", "de"), ("growth", "growth")):
        assert torch.allclose(x[theirs], mine[key], atol=1e-4), key
    for i, alpha in enumerate(ALPHAS):
        scaled = example.scaled(alpha)
        assert torch.allclose(x["graded_direct_effect"][i], scaled["de"], atol=1e-4)
        assert torch.allclose(x["graded_growth"][i], scaled["growth"], atol=1e-4)
