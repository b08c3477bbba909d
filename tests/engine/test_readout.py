"""The two-column readout (answer and wrong columns only) on a model whose unembedding has a bias
and whose LayerNorms have non-trivial weights and biases: it must equal the full logits."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.forward import run_to_final_resid
from patchstudio.engine.metrics import Readout
from patchstudio.engine.run import run


def test_the_builder_perturbs_what_the_default_tiny_model_leaves_trivial(perturbed_model, tiny_model):
    assert float(tiny_model.b_U.abs().max()) == 0.0
    assert float(perturbed_model.b_U.abs().max()) > 0.5
    assert float((perturbed_model.ln_final.w.detach() - 1).abs().max()) > 0.1


@pytest.mark.parametrize("metric", ["logit_diff", "prob", "kl"])
def test_readout_equals_the_full_logits(perturbed_model, metric):
    for p in TINY_PAIRS:
        tokens = perturbed_model.to_tokens(p["clean"])
        ans = int(perturbed_model.to_tokens(" " + p["answer"], prepend_bos=False)[0, 0])
        wrong = int(perturbed_model.to_tokens(" " + p["wrong"], prepend_bos=False)[0, 0])
        with torch.no_grad():
            logits = perturbed_model(perturbed_model.to_tokens(p["corrupted"]))[0, -1]
            clean_lp = perturbed_model(tokens)[0, -1].log_softmax(-1)
            resid = run_to_final_resid(perturbed_model, perturbed_model.to_tokens(p["corrupted"]), {})
            got = float(Readout(perturbed_model, metric, ans, wrong, clean_lp)(resid)[0])
        lp = logits.log_softmax(-1)
        want = {"logit_diff": logits[ans] - logits[wrong], "prob": lp[ans].exp(),
                "kl": (clean_lp.exp() * (clean_lp - lp)).sum()}[metric]
        assert got == pytest.approx(float(want), abs=1e-4)


def test_patching_the_whole_stream_gives_the_clean_metric_exactly(perturbed_model):
    """Patched values go through the readout; the baselines through the model's own logits."""
    result = run(perturbed_model, {"prompts": TINY_PAIRS, "component": "resid_pre"})
    assert result.values[0] == pytest.approx(result.clean, abs=1e-4)
    noised = run(perturbed_model, {"prompts": TINY_PAIRS, "component": "resid_post", "direction": "noise"})
    assert noised.values[-1] == pytest.approx(noised.corrupted, abs=1e-4)
