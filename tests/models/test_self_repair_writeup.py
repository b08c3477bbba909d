"""docs/self-repair.md, pinned: the Hydra effect on the hydra model, on the "Self-repair view"
example's prompts (16 IOI pairs, template 0, seed 7; L2H2 mean-ablated).

The engine's figures (spec ids, TE, DE, the compensator's growth, the paired ablation) are checked
to the write-up's precision; the mechanism (L3H4's attention moves from BOS to S2 when L2H2 is
gone, and its direct effect rises) is measured with plain TransformerLens hooks and a reference set
of its own, so neither a bug in the engine nor the engine's choice of reference prompts can make
it pass."""

from __future__ import annotations

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
    """TE is smaller than DE: the network compensates (on the default model it amplifies)."""
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


def test_the_same_experiment_on_the_default_model_amplifies(spec):
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
