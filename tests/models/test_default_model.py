"""The committed default model: loads offline, tokenizes with one BOS, and does IOI and induction
on held-out prompts as well as its metrics.json says."""

from __future__ import annotations

import json

import pytest
import torch

from patchstudio.models import prompts
from patchstudio.models.default_model import DEFAULT_DIR, load_default_model, load_tokenizer, weights_fingerprint
from patchstudio.models.training import evaluate



@pytest.fixture(scope="module")
def metrics():
    return json.loads((DEFAULT_DIR / "metrics.json").read_text())


@pytest.fixture(scope="module")
def model():
    return load_default_model()


@pytest.fixture(scope="module")
def measured(model, metrics):
    e = metrics["eval"]
    # One thread: as fast on idle cores for this small model, and far faster when other jobs
    # share the cores (multi-threaded torch then waits on descheduled threads).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return evaluate(model, n=e["n"], seed=e["seed"], n_induction=e["n_induction"], induction_length=e["induction_length"])
    finally:
        torch.set_num_threads(threads)


def test_config(model, metrics):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.n_ctx) == (4, 8, 128, 16, 64)
    assert cfg.normalization_type == "LN" and cfg.act_fn == "gelu"
    assert cfg.d_vocab == len(model.tokenizer) == metrics["model"]["d_vocab"]
    assert not model.training
    assert weights_fingerprint() == metrics["model"]["fingerprint"]


def test_tokenization_one_bos(model):
    text = "When Mary and John went to the store, John gave a drink to"
    bos = model.tokenizer.bos_token_id
    toks = model.to_tokens(text)
    assert model.to_str_tokens(text) == [
        "<bos>", "When", "Mary", "and", "John", "went", "to", "the", "store", ",", "John", "gave", "a", "drink", "to",
    ]  # fmt: skip
    assert toks[0, 0].item() == bos and (toks == bos).sum().item() == 1
    assert model.to_tokens(text, prepend_bos=False)[0].tolist() == toks[0, 1:].tolist()
    assert model.to_single_token("Mary") == model.tokenizer.convert_tokens_to_ids("Mary")
    # Batches of different lengths: one BOS per row, right padding.
    batch = model.to_tokens(["When Mary", text])
    assert (batch[:, 0] == bos).all() and (batch == bos).sum().item() == 2
    # Unknown words map to <unk>, punctuation is split off.
    assert model.to_str_tokens("Zyx, Mary.") == ["<bos>", "<unk>", ",", "Mary", "."]


def test_heldout_metrics(measured, metrics):
    assert measured["ioi_accuracy"] >= 0.95
    assert measured["ioi_logit_diff"] >= 3.0
    assert abs(measured["ioi_abc_logit_diff"]) < 1.0  # no name is licensed after ABC corruption
    assert measured["ioi_swap_logit_diff"] <= -3.0  # the swap flips the answer
    assert measured["induction_accuracy"] >= 0.9
    for t in prompts.HELDOUT_TEMPLATES:
        assert metrics["ioi_heldout_per_template"][str(t)]["accuracy"] >= 0.9


def test_metrics_match_committed(measured, metrics):
    for key, value in measured.items():
        if isinstance(value, float):
            assert value == pytest.approx(metrics[key], abs=1e-4), key
    for t, per_t in measured["ioi_heldout_per_template"].items():
        assert per_t == pytest.approx(metrics["ioi_heldout_per_template"][t], abs=1e-4), t


def test_template_batch(model):
    # Users batch same-template pairs: one length, so no padding; the clean answer wins.
    pairs = prompts.ioi_pairs(16, seed=7, template=0, split="heldout")
    toks = model.to_tokens([p.clean for p in pairs])
    assert toks.shape == (16, 15)
    with torch.no_grad():
        logits = model(toks)[:, -1]
    ids = model.tokenizer.convert_tokens_to_ids
    diff = logits[torch.arange(16), [ids(p.answer) for p in pairs]] - logits[torch.arange(16), [ids(p.wrong) for p in pairs]]
    assert (diff > 0).all()


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json.*patchstudio train-default"):
        load_default_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        weights_fingerprint(tmp_path)


def test_tokenizer_prepends_bos_itself():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    tok = load_tokenizer()
    assert tok.convert_ids_to_tokens(tok("When Mary, John")["input_ids"]) == ["<bos>", "When", "Mary", ",", "John"]
    # So a bridge whose tokenizer is assigned after boot (no BOS detection runs; TL's default
    # cfg.tokenizer_prepends_bos=True) also gets exactly one BOS.
    cfg = TransformerBridgeConfig.from_dict(json.loads((DEFAULT_DIR / "config.json").read_text()))
    bridge = TransformerBridge.boot_native(cfg)
    bridge.tokenizer = tok
    assert bridge.to_str_tokens("When Mary") == ["<bos>", "When", "Mary"]
    assert bridge.to_str_tokens("When Mary", prepend_bos=False) == ["When", "Mary"]
