"""The shipped Tracr models compute their programs exactly, on every input of 1 to max_seq_len
words, without JAX: each model's output is compared with the program written in plain Python
(tracr_programs.py). They load by name, tokenize with one <bos>, and their logits are what their
cards say they are."""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction

import pytest
import torch

import patchstudio
from patchstudio.models.tracr import GROUND_TRUTH_FILE, TASKS, TRACR_MODELS
from tracr_programs import PROGRAMS, inputs

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(model, words: list[str]) -> list[int]:
    return [model.tokenizer.bos_token_id, *model.tokenizer.convert_tokens_to_ids(words)]


def _output_index(name: str) -> int:
    """The residual dimension of a numerical program's output (from the shipped ground truth)."""
    truth = json.loads((TRACR_MODELS[name] / GROUND_TRUTH_FILE).read_text())
    reads = next(n for n in truth["nodes"] if n["kind"] == "logits")["reads"]["in"]
    return truth["residual"].index(next(label for label in reads if label != "one"))


def test_every_input_gives_the_programs_output(tracr_name, tracr_model):
    task, program = TASKS[tracr_name], PROGRAMS[tracr_name]
    tokens = tracr_model.tokenizer.convert_ids_to_tokens(list(range(len(tracr_model.tokenizer))))
    checked = 0
    for length in range(1, task.max_seq_len + 1):
        batch = inputs(task.vocab, length)
        with torch.no_grad():
            logits = tracr_model(torch.tensor([_ids(tracr_model, words) for words in batch]))
        predicted = logits[:, 1:].argmax(-1)
        for b, words in enumerate(batch):
            assert [tokens[i] for i in predicted[b].tolist()] == program(words), words
        checked += len(batch)
    assert checked == sum(len(task.vocab) ** n for n in range(1, task.max_seq_len + 1))


def test_the_numerical_output_is_the_fraction_itself():
    """frac_prevs's residual output v is the exact fraction to within 1e-6 (not just nearest to it)."""
    task = TASKS["tracr-proportion"]
    model = patchstudio.load_model(task.name)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    for length in range(1, task.max_seq_len + 1):
        batch = inputs(task.vocab, length)
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([_ids(model, w) for w in batch]), names_filter=[last])
        v = cache[last][:, 1:, _output_index(task.name)].double()
        exact = torch.tensor([[float(Fraction(f)) for f in PROGRAMS[task.name](w)] for w in batch], dtype=torch.double)
        assert (v - exact).abs().max() < 1e-6


def test_logits_are_what_the_card_says(tracr_name, tracr_model):
    """Categorical: logit(t) = the output coordinate of t (~1 for the output, ~0 for the other
    values), exactly 0 for every other token. Numerical: logit(c) = S (2 c v - c^2), and -S for every
    token that is no value."""
    task = TASKS[tracr_name]
    words = list(task.vocab[:3]) if len(task.vocab) >= 3 else list(task.vocab)
    last = f"blocks.{tracr_model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        logits, cache = tracr_model.run_with_cache(torch.tensor([_ids(tracr_model, words)]), names_filter=[last])
    logits = logits[0, 1:].double()
    vocab = tracr_model.tokenizer.get_vocab()
    outputs = torch.tensor([vocab[o] for o in task.outputs])
    others = torch.tensor([i for t, i in vocab.items() if t not in task.outputs])
    if task.numerical:
        v = cache[last][0, 1:, _output_index(tracr_name)].double()[:, None]
        c = torch.tensor([float(Fraction(o)) for o in task.outputs], dtype=torch.double)[None, :]
        s = task.logit_scale
        torch.testing.assert_close(logits[:, outputs], s * (2 * c * v - c * c), atol=1e-4, rtol=0)
        assert (logits[:, others] == -s).all()
    else:
        expected = torch.zeros(len(words), len(task.outputs), dtype=torch.double)
        for i, out in enumerate(PROGRAMS[tracr_name](words)):
            expected[i, task.outputs.index(out)] = 1.0
        torch.testing.assert_close(logits[:, outputs], expected, atol=1e-3, rtol=0)
        assert (logits[:, others] == 0).all()


def test_config_is_tracrs_architecture(tracr_name, tracr_model):
    cfg, task = tracr_model.cfg, TASKS[tracr_name]
    assert cfg.normalization_type is None and cfg.act_fn == "relu"
    assert cfg.attention_dir == ("causal" if task.causal else "bidirectional")
    assert cfg.n_ctx == task.max_seq_len + 1
    assert cfg.d_vocab == cfg.d_vocab_out == len(tracr_model.tokenizer) == tracr_model.W_U.shape[1]
    assert not tracr_model.training
    state = tracr_model.state_dict()
    assert (state["pos_embed.weight"][0] == 0).all()  # Tracr gives the BOS position no index
    assert (state["unembed.bias"] == 0).all()


def test_tokenizer_prepends_one_bos_and_knows_only_the_vocabulary(tracr_name, tracr_model):
    task = TASKS[tracr_name]
    text = " ".join(task.vocab)
    assert tracr_model.to_str_tokens(text) == ["<bos>", *task.vocab]
    toks = tracr_model.to_tokens(text)[0]
    assert (toks == tracr_model.tokenizer.bos_token_id).sum() == 1
    assert tracr_model.to_str_tokens("nope")[1] == "<unk>"
    for out in task.outputs:  # answers are single tokens, fractions included
        assert tracr_model.to_str_tokens(f"{task.vocab[0]} {out}") == ["<bos>", task.vocab[0], out]


def test_shipped_files_agree(tracr_name):
    directory = TRACR_MODELS[tracr_name]
    truth = json.loads((directory / GROUND_TRUTH_FILE).read_text())
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert truth["compiled"]["weights_sha256"] == digest
    card = (directory / "CARD.md").read_text()
    assert "**Compiled, not trained.**" in card and digest in card and TASKS[tracr_name].program in card
    assert f"all\n{truth['compiled']['check']['inputs']} inputs" in card
    assert truth["compiled"]["check"]["inputs"] == sum(len(TASKS[tracr_name].vocab) ** n for n in range(1, 6))


def test_registry_and_loader_agree():
    from patchstudio.models.registry import describe_model

    model = patchstudio.load_model("tracr-proportion")
    assert describe_model(model)["shape"] == "2 layers x 1 heads, d_model 14"
    half = patchstudio.load_model("tracr-proportion", dtype="bfloat16")
    assert half.W_U.dtype == torch.bfloat16
