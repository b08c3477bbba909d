"""``patchstudio run`` with an answer of several tokens, on a tiny Llama built offline: the command
prints what teacher forcing gives by plain hooks (tests/references.py), not a first-token logit."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import patchstudio
import references as R
from family_models import MULTI_TOKEN_PAIRS
from patchstudio.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


def test_run_scores_a_multi_token_answer_as_a_sequence(monkeypatch, tmp_path, family_models):
    model = family_models("llama")
    monkeypatch.setattr(patchstudio, "load_model", lambda name="default", *, device="cpu", dtype="float32": model)
    pairs = MULTI_TOKEN_PAIRS[:1]
    spec = {"prompts": pairs, "component": "resid_pre", "positions": "each"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "spec.json"), "--quiet"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    pair = R.pairs_of(model, pairs)[0]
    assert len(pair.answer) > 1  # "Mary Ann" is several tokens for this tokenizer
    with torch.no_grad():
        clean = float(R.score(model, pair.clean, pair, "logit_diff"))
        corrupted = float(R.score(model, pair.corrupted, pair, "logit_diff"))
        # resid_pre at layer 1, the last prompt position, clean into the corrupted run
        n = pair.clean.shape[1]
        clean_resid = model.run_with_cache(pair.clean, names_filter=["blocks.1.hook_resid_pre"])[1]["blocks.1.hook_resid_pre"]

        def put(act, hook):
            act = act.clone()
            act[:, n - 1] = clean_resid[:, n - 1]
            return act

        patched = float(R.score(model, pair.corrupted, pair, "logit_diff", [("blocks.1.hook_resid_pre", put)]))
    assert out["clean"] == pytest.approx(clean, abs=1e-4) and out["corrupted"] == pytest.approx(corrupted, abs=1e-4)
    assert out["values"][1][n - 1] == pytest.approx(patched, abs=1e-4)
    assert out["prompts"][0]["answer_tokens"] == len(pair.answer)
