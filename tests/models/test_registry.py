"""Loading models by name, offline: a Hugging Face directory saved here, a missing model, fingerprints."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformer_lens.model_bridge import TransformerBridge

import patchstudio
from helpers import TINY_PAIRS, build_word_tokenizer
from patchstudio.models.registry import ModelUnavailableError, load_model, model_fingerprint

MISSING = "no-such-org/no-such-model-xyz"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT-2 and a word-level tokenizer saved together with save_pretrained."""
    directory = tmp_path_factory.mktemp("tiny_gpt2")
    tokenizer = build_word_tokenizer(directory)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=32,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.bos_token_id,
        initializer_range=0.3,  # far from the default 0.02, so the logits are well above float noise
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def bridge(hf_dir):
    return load_model(str(hf_dir))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Offline mode for this test. huggingface_hub reads HF_HUB_OFFLINE once, at import: set both."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


def test_local_directory_loads_as_bridge_in_eval_mode(bridge):
    assert isinstance(bridge, TransformerBridge)
    assert bridge.training is False
    assert all(not m.training for m in bridge.modules())
    assert (bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_model, bridge.cfg.d_vocab) == (2, 2, 32, 30)


def test_logits_equal_the_hugging_face_model(hf_dir, bridge):
    reference = GPT2LMHeadModel.from_pretrained(str(hf_dir), attn_implementation="eager").eval()
    tokens = torch.cat([bridge.to_tokens(p["clean"]) for p in TINY_PAIRS])
    assert tokens[0].tolist()[:3] == [0, 3, 5]  # <bos> When Mary: the word-level tokenizer was loaded
    with torch.no_grad():
        ours = bridge(tokens)
        theirs = reference(tokens).logits
    assert ours.shape == theirs.shape == (2, 15, 30)
    assert theirs.std() > 0.5  # a comparison of near-zero logits would prove little
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_patchstudio_run_works_on_a_loaded_model(hf_dir, bridge):
    result = patchstudio.run({"model": str(hf_dir), "prompts": TINY_PAIRS}, model=bridge)
    assert result.axes == ["layer", "head"]
    assert result.labels == {"layer": ["0", "1"], "head": ["0", "1"]}
    assert len(result.values) == 2 and all(len(row) == 2 for row in result.values)
    assert all(isinstance(v, float) for row in result.values for v in row)
    assert result.model.name == str(hf_dir)
    assert (result.model.n_layers, result.model.n_heads, result.model.d_vocab) == (2, 2, 30)
    # Four different values: the sweep patched each head separately.
    assert len({round(v, 6) for row in result.values for v in row}) == 4


def test_missing_model_offline_says_how_to_get_it(offline):
    with pytest.raises(ModelUnavailableError) as info:
        load_model(MISSING)
    exc = info.value
    assert type(exc) is ModelUnavailableError
    message = str(exc)
    assert message.startswith(f"model '{MISSING}' could not be loaded: its weights are neither in the Hugging Face cache")
    assert f"({offline})" in message  # the cache it looked in
    # the command the installed huggingface_hub ships (1.0 and later: `hf`; `huggingface-cli` is gone)
    assert f"`hf download {MISSING}`" in message
    assert "save_pretrained" in message
    assert isinstance(exc.__cause__, OSError)  # the original error is chained, not shown as a traceback


def test_missing_model_through_the_package_api(offline):
    with pytest.raises(ModelUnavailableError, match="`hf download no-such-org/no-such-model-xyz`"):
        patchstudio.load_model(MISSING)
    assert ("no-such-org/no-such-model-xyz", "cpu") not in patchstudio._LOADED


def test_missing_local_directory_is_unavailable(offline, tmp_path):
    missing = tmp_path / "not_saved_here"
    with pytest.raises(ModelUnavailableError) as info:
        load_model(str(missing))
    assert str(info.value).startswith(f"model '{missing}' could not be loaded")


def test_fingerprint_is_stable(hf_dir, bridge):
    first = model_fingerprint(bridge)
    assert len(first) == 64 and int(first, 16) >= 0
    assert model_fingerprint(bridge) == first
    assert model_fingerprint(load_model(str(hf_dir))) == first  # same weights loaded again


def test_fingerprint_changes_when_one_weight_changes(hf_dir):
    model = load_model(str(hf_dir))
    before = model_fingerprint(model)
    name, param = next((n, p) for n, p in model.named_parameters() if p.ndim == 2)
    with torch.no_grad():
        old = param[0, 0].item()
        param[0, 0] += 1e-3
    changed = model_fingerprint(model)
    assert changed != before, name
    with torch.no_grad():
        param[0, 0] = old
    assert model_fingerprint(model) == before


def test_fingerprint_differs_between_models(bridge, tiny_model):
    assert model_fingerprint(bridge) != model_fingerprint(tiny_model)


def test_download_command_is_the_installed_clis():
    from importlib.metadata import entry_points

    from patchstudio.models.registry import download_command

    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")}
    assert "hf" in scripts  # huggingface_hub >= 1.0, as installed here
    assert download_command("gpt2") == "hf download gpt2"


def test_download_command_before_huggingface_hub_1(monkeypatch):
    import importlib.metadata

    from patchstudio.models.registry import download_command

    class EntryPoint:
        name, value = "huggingface-cli", "huggingface_hub.commands.huggingface_cli:main"

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [EntryPoint()])
    assert download_command("gpt2") == "huggingface-cli download gpt2"
