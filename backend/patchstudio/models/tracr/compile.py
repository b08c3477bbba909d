"""Regenerate the shipped Tracr models: RASP program -> Tracr weights (JAX) -> TransformerBridge.

Needs the optional ``tracr`` extra (JAX, dm-haiku, tracr-pypi; see pyproject.toml), in its own
environment; the app and the tests never import this module. Run from the repository root::

    PYTHONPATH=backend python -m patchstudio.models.tracr.compile            # every model
    PYTHONPATH=backend python -m patchstudio.models.tracr.compile --check    # compare, write nothing

For each program in ``TASKS`` it

1. compiles the program with Tracr's own pipeline (``compile_rasp_to_model``'s steps, kept apart
   so that the craft model, whose blocks name the residual subspaces they read and write, stays at
   hand);
2. converts the assembled weights to a TransformerLens-native TransformerBridge: Tracr's layer L
   (attention, then MLP) is block L; a layer without attention (or without an MLP) keeps the zero
   weights Tracr gave it, as does a head slot a layer does not use; no LayerNorm, ReLU MLPs,
   the attention direction Tracr compiled with (``bidirectional`` unless the task is causal);
3. writes a word-level tokenizer whose ids are the embedding rows: ``<bos>`` is Tracr's BOS token,
   ``<pad>`` its PAD token, then the input vocabulary, then output-only tokens (embedded as zero
   rows: they are answers, never inputs);
4. builds the unembedding the project's metrics read (logits over the tokenizer's ids): for a
   categorical program, the logit of token t is the residual coordinate ``<output>:t``; for a
   numerical one, the logit of the fraction token c is ``S (2 c v - c^2)`` with S = max_seq_len^2
   (v the output coordinate, c^2 read from Tracr's constant ``one`` direction), so the argmax is
   the value nearest to v (every other token scores -S), a logit difference is affine in v, and answers k/n and (k-1)/n at
   n = max_seq_len are +1 and -1 apart as in the categorical models (CARD.md: each metric);
5. checks the converted model on every input up to ``max_seq_len`` against Tracr's own forward
   pass and against RASP's evaluator, and stops if any output differs;
6. derives the ground-truth circuit from the craft model (which block reads which residual
   subspace written by which) and writes ``ground_truth.json`` and ``CARD.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from patchstudio.models.tracr import GROUND_TRUTH_FILE, TASKS, TracrTask

SPECIAL_TOKENS = ("<bos>", "<unk>", "<pad>")
TRACR_BOS, TRACR_PAD = "BOS", "PAD"
# Tracr's own special tokens, by the tokenizer's names for them (<unk> has no Tracr row: zero).
TRACR_SPECIAL = {"<bos>": TRACR_BOS, "<pad>": TRACR_PAD}
ONE = "one"  # Tracr's constant direction: every token embedding writes 1 there
PACKAGES = ("tracr-pypi", "jax", "jaxlib", "dm-haiku", "numpy", "torch", "transformer-lens", "transformers")
GROUND_TRUTH_FORMAT = "patchstudio-tracr-ground-truth/1"


# --- compiling ---------------------------------------------------------------------------------


def build_program(task: TracrTask):
    """(RASP program, Tracr vocabulary) of a task, exactly as ``task.program`` reads."""
    from tracr.compiler import lib
    from tracr.rasp import rasp

    # Residual labels are "name_id", ids drawn from one global counter when a label is first read:
    # restart it (and forget the id of lib's module-level `length`) so that a program's labels do
    # not depend on which programs were compiled before it in this process.
    rasp.RASPExpr._ids = itertools.count(1)
    vars(lib.length).pop("unique_id", None)
    if task.name == "tracr-reverse":
        return lib.make_reverse(rasp.tokens), set(task.vocab)
    if task.name == "tracr-proportion":
        return lib.make_frac_prevs(rasp.tokens == "x"), set(task.vocab)
    if task.name == "tracr-sort":
        return lib.make_sort(rasp.tokens, rasp.tokens, max_seq_len=task.max_seq_len, min_key=1), {int(t) for t in task.vocab}
    raise KeyError(task.name)


@dataclass
class Compiled:
    task: TracrTask
    program: Any  # rasp.SOp
    assembled: Any  # tracr AssembledTransformerModel
    craft_model: Any  # tracr SeriesWithResiduals
    module_names: list[str]  # "transformer/layer_L/attn" or ".../mlp", one per craft block
    outputs: dict[str, str]  # output token -> its residual label (numerical: every token -> the one label)
    value_of: dict[str, Any]  # input token -> Tracr value


def compile_task(task: TracrTask) -> Compiled:
    """``compiling.compile_rasp_to_model``'s steps, keeping the craft model."""
    from tracr.compiler import (
        assemble, basis_inference, craft_graph_to_model, craft_model_to_transformer, expr_to_craft_graph,
        nodes, rasp_to_graph, validating,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp

    program, vocab = build_program(task)
    unsupported = validating.static_validate(program)
    if unsupported:
        raise NotImplementedError([f"{e.expr.name}: {e.reason}" for e in unsupported])
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, task.max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph, bos_dir=bases.BasisDirection(rasp.tokens.label, TRACR_BOS), mlp_exactness=100
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    assembled = craft_model_to_transformer.craft_model_to_transformer(
        craft_model=craft_model, graph=graph, sink=sink, max_seq_len=task.max_seq_len,
        compiler_bos=TRACR_BOS, compiler_pad=TRACR_PAD, causal=task.causal,
    )
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    basis = {str(d.value): str(d) for d in sink[nodes.OUTPUT_BASIS]}
    outputs = {o: (basis[o] if not task.numerical else str(sink[nodes.OUTPUT_BASIS][0])) for o in task.outputs}
    return Compiled(task, program, assembled, craft_model, module_names, outputs, {str(v): v for v in vocab})


# --- tokenizer, config, weights ------------------------------------------------------------------


def token_list(task: TracrTask) -> list[str]:
    """The tokenizer's words in id order: specials, the input vocabulary, output-only tokens."""
    return [*SPECIAL_TOKENS, *task.vocab, *(o for o in task.outputs if o not in task.vocab)]


def write_tokenizer(task: TracrTask, out_dir: Path):
    """Word level, split on whitespace only (so '2/5' is one token), <bos> prepended by the tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(token_list(task))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    # eos = <bos> (as GPT-2's <|endoftext|> is both): with no eos, TransformerLens names one that
    # this vocabulary lacks, so it becomes <unk>, and when its probe word "a" is unknown too it
    # decides that the tokenizer appends eos and strips every trailing <unk> from to_tokens.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", unk_token="<unk>",
                                   pad_token="<pad>")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    fast.save_pretrained(str(out_dir))


def model_config(c: Compiled) -> dict:
    mc = c.assembled.model_config
    d_vocab = len(token_list(c.task))
    return {
        "d_model": len(c.assembled.residual_labels),
        "d_head": int(mc.key_size),
        "n_layers": int(mc.num_layers),
        "n_heads": int(mc.num_heads),
        "d_mlp": int(mc.mlp_hidden_size),
        "n_ctx": c.task.max_seq_len + 1,
        "act_fn": "relu",
        "normalization_type": None,
        "positional_embedding_type": "standard",
        "attention_dir": "causal" if mc.causal else "bidirectional",
        "model_name": c.task.name,
        "d_vocab": d_vocab,
        "d_vocab_out": d_vocab,
        "seed": 0,
        "tokenizer_prepends_bos": True,
    }


def unembedding(c: Compiled) -> np.ndarray:
    """[d_vocab, d_model]: row t reads the residual stream into token t's logit (module docstring, 4)."""
    labels = {label: i for i, label in enumerate(c.assembled.residual_labels)}
    tokens = token_list(c.task)
    w_u = np.zeros((len(tokens), len(labels)), dtype=np.float64)
    if c.task.numerical:  # the value 0 scores 0: every token that is no output scores below it
        w_u[[i for i, t in enumerate(tokens) if t not in c.task.outputs], labels[ONE]] = -c.task.logit_scale
    for out in c.task.outputs:
        row = tokens.index(out)
        if c.task.numerical:
            value = Fraction(out)
            w_u[row, labels[c.outputs[out]]] = c.task.logit_scale * 2 * float(value)
            w_u[row, labels[ONE]] = -c.task.logit_scale * float(value * value)
        else:
            w_u[row, labels[c.outputs[out]]] = 1.0
    return w_u


def bridge_state_dict(c: Compiled) -> dict[str, Any]:
    """The converted weights under the TransformerBridge's own names (torch float32)."""
    import torch

    params = {k: {p: np.asarray(v, dtype=np.float64) for p, v in d.items()} for k, d in c.assembled.params.items()}
    tracr_ids = c.assembled.input_encoder.encoding_map
    token_rows = params["token_embed"]["embeddings"]
    embed = np.zeros((len(token_list(c.task)), token_rows.shape[1]))
    for i, word in enumerate(token_list(c.task)):
        name = TRACR_SPECIAL.get(word, word)
        value = c.value_of.get(name, name)
        if word in c.task.vocab or word in TRACR_SPECIAL:
            embed[i] = token_rows[tracr_ids[value]]
    state = {"embed.weight": embed, "pos_embed.weight": params["pos_embed"]["embeddings"]}
    for layer in range(int(c.assembled.model_config.num_layers)):
        p = f"transformer/layer_{layer}"
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "linear")):
            state[f"blocks.{layer}.attn.{ours}.weight"] = params[f"{p}/attn/{theirs}"]["w"].T
            state[f"blocks.{layer}.attn.{ours}.bias"] = params[f"{p}/attn/{theirs}"]["b"]
        for ours, theirs in (("in", "linear_1"), ("out", "linear_2")):
            state[f"blocks.{layer}.mlp.{ours}.weight"] = params[f"{p}/mlp/{theirs}"]["w"].T
            state[f"blocks.{layer}.mlp.{ours}.bias"] = params[f"{p}/mlp/{theirs}"]["b"]
    w_u = unembedding(c)
    state["unembed.weight"] = w_u
    state["unembed.bias"] = np.zeros(w_u.shape[0])
    return {k: torch.tensor(np.ascontiguousarray(v), dtype=torch.float32) for k, v in state.items()}


def boot(c: Compiled, directory: Path):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory / "tokenizer"))
    cfg = TransformerBridgeConfig.from_dict({**model_config(c), "device": "cpu"})
    model = TransformerBridge.boot_native(cfg, tokenizer=tokenizer, device="cpu")
    model.load_state_dict(bridge_state_dict(c), strict=True)
    return model.eval()


# --- checking the conversion ---------------------------------------------------------------------


def all_inputs(task: TracrTask):
    for n in range(1, task.max_seq_len + 1):
        yield from (list(words) for words in itertools.product(task.vocab, repeat=n))


def check(c: Compiled, model) -> dict:
    """Every input up to max_seq_len: the bridge's decoded output equals Tracr's and RASP's; the
    largest difference between the bridge's final residual stream and Tracr's."""
    import jax.numpy as jnp
    import torch
    from tracr.rasp import rasp

    task, tokens = c.task, token_list(c.task)
    worst, n_inputs = 0.0, 0
    for n in range(1, task.max_seq_len + 1):
        batch = [list(w) for w in itertools.product(task.vocab, repeat=n)]
        values = [[c.value_of[w] for w in words] for words in batch]
        tracr_ids = jnp.array([c.assembled.input_encoder.encode([TRACR_BOS, *v]) for v in values])
        out = c.assembled.forward(c.assembled.params, tracr_ids)
        theirs_resid = np.asarray(out.transformer_output.output, dtype=np.float64)
        ids = torch.tensor([[tokens.index("<bos>"), *(tokens.index(w) for w in words)] for words in batch])
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        with torch.no_grad():
            logits, cache = model.run_with_cache(ids, names_filter=[last])
        worst = max(worst, float(np.abs(cache[last].double().numpy() - theirs_resid).max()))
        predicted = logits.argmax(-1)
        theirs_out = np.asarray(out.unembedded_output)
        for b, v in enumerate(values):
            expected = rasp.evaluate(c.program, v)
            ours = [tokens[int(i)] for i in predicted[b, 1:]]
            if task.numerical:
                want = [str(Fraction(x).limit_denominator(task.max_seq_len)) for x in expected]
                tracr = [str(Fraction(float(x)).limit_denominator(task.max_seq_len)) for x in theirs_out[b, 1:]]
            else:
                want = [str(x) for x in expected]
                tracr = [str(x) for x in c.assembled.output_encoder.decode(theirs_out[b, 1:].tolist())]
            if not (ours == tracr == want):
                raise AssertionError(f"{task.name} on {batch[b]}: bridge {ours}, tracr {tracr}, RASP {want}")
        n_inputs += len(batch)
    return {"inputs": n_inputs, "max_abs_residual_difference": worst}


# --- ground truth ----------------------------------------------------------------------------------


def _used(space, matrix, axis: int) -> list[str]:
    """The directions of ``space`` whose row (axis 0) or column (axis 1) of ``matrix`` is not all zero:
    Tracr's declared spaces can hold directions a block's map ignores (frac_prevs's "x" test reads
    only tokens:x out of its tokens space)."""
    used = np.abs(np.asarray(matrix)).sum(axis=1 - axis) > 0
    return [str(d) for d, u in zip(space.basis, used) if u]


def ground_truth(c: Compiled) -> dict:
    """Nodes (input, each head, each MLP, logits) with the residual labels they read and write, and
    every edge sender -> receiver input whose subspaces meet (sender earlier in the forward pass).

    Reads and writes are the craft blocks' own maps: a head reads its query from the directions of
    ``w_qk.left_space`` that its bilinear map uses, its key from those of ``w_qk.right_space``, its value
    from those of ``w_ov.input_space``, and writes the used directions of ``w_ov.output_space``; an MLP
    reads the used directions of ``fst.input_space`` and writes those of ``snd.output_space``. The input
    embeddings write the token and position directions and ``one``; the logits read what the
    unembedding reads (the output directions, and ``one`` for a numerical program)."""
    from tracr.craft import transformers

    residual = list(c.assembled.residual_labels)
    mc = c.assembled.model_config
    n_layers, n_heads = int(mc.num_layers), int(mc.num_heads)
    token_like = [lab for lab in residual if lab.startswith(("tokens:", "indices:")) or lab == ONE]
    nodes: dict[str, dict] = {"input": {"kind": "input", "writes": token_like}}
    blocks: dict[tuple[int, str], Any] = {}
    for name, block in zip(c.module_names, c.craft_model.blocks):
        layer, kind = int(name.split("/")[1].split("_")[1]), name.split("/")[2]
        blocks[(layer, kind)] = block
    for layer in range(n_layers):
        attn = blocks.get((layer, "attn"))
        heads = list(attn.as_multi().heads()) if attn is not None else []
        for h in range(n_heads):
            head = heads[h] if h < len(heads) else None
            nodes[f"a{layer}.h{h}"] = {
                "kind": "head", "layer": layer, "head": h,
                "reads": {
                    "q": _used(head.w_qk.left_space, head.w_qk.matrix, 0) if head else [],
                    "k": _used(head.w_qk.right_space, head.w_qk.matrix, 1) if head else [],
                    "v": _used(head.w_ov.input_space, head.w_ov.matrix, 0) if head else [],
                },
                "writes": _used(head.w_ov.output_space, head.w_ov.matrix, 1) if head else [],
            }
        mlp = blocks.get((layer, "mlp"))
        assert mlp is None or isinstance(mlp, transformers.MLP)
        nodes[f"m{layer}"] = {
            "kind": "mlp", "layer": layer,
            "reads": {"in": _used(mlp.fst.input_space, mlp.fst.matrix, 0) if mlp else []},
            "writes": _used(mlp.snd.output_space, mlp.snd.matrix, 1) if mlp else [],
        }
    read_by_logits = [residual[j] for j in np.flatnonzero(np.abs(unembedding(c)).sum(0))]
    nodes["logits"] = {"kind": "logits", "reads": {"in": read_by_logits}}
    for node in nodes.values():  # what each block computes: the residual variables it writes
        if node.get("writes"):
            node["computes"] = sorted({lab.split(":")[0] for lab in node["writes"]})

    order = list(nodes)
    edges = []
    for r, receiver in enumerate(order):
        for inp, reads in nodes[receiver].get("reads", {}).items():
            for sender in order[:r]:
                if nodes[sender]["kind"] == "mlp" and nodes[receiver]["kind"] == "head" \
                        and nodes[sender]["layer"] == nodes[receiver]["layer"]:
                    continue  # block L's heads run before its MLP
                via = sorted(set(nodes[sender].get("writes", [])) & set(reads))
                if via:
                    name = f"{sender}->{receiver}" + (f"<{inp}>" if nodes[receiver]["kind"] == "head" else "")
                    edges.append({"name": name, "sender": sender, "receiver": receiver, "input": inp, "via": via,
                                  "constant": via == [ONE]})
    # a node is in the circuit if some path of edges runs through it from the input to the logits
    forward = {n: {e["receiver"] for e in edges if e["sender"] == n} for n in order}
    backward = {n: {e["sender"] for e in edges if e["receiver"] == n} for n in order}
    from_input, to_logits = _reach("input", forward), _reach("logits", backward)
    circuit = [n for n in order if n in from_input and n in to_logits and n not in ("input", "logits")]
    return {
        "format": GROUND_TRUTH_FORMAT,
        "model": c.task.name,
        "program": c.task.program,
        "derived_from": "Tracr's craft model: the residual directions each block's maps read and write",
        "n_layers": n_layers,
        "n_heads": n_heads,
        "residual": residual,
        "nodes": [{"name": n, **nodes[n]} for n in order],
        "circuit_nodes": circuit,
        "edges": edges,
    }


def _reach(start: str, step: dict[str, set[str]]) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in step[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


# --- writing -----------------------------------------------------------------------------------------


def environment() -> dict[str, str]:
    return {p: version(p) for p in PACKAGES}


def write(c: Compiled, directory: Path) -> dict:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(c.task, directory / "tokenizer")
    (directory / "config.json").write_text(json.dumps(model_config(c), indent=2) + "\n")
    save_file(bridge_state_dict(c), str(directory / "model.safetensors"))
    measured = check(c, boot(c, directory))
    truth = ground_truth(c)
    truth["compiled"] = {"environment": environment(), "check": measured,
                         "weights_sha256": hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()}
    (directory / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
    from patchstudio.models.tracr.card import card

    (directory / "CARD.md").write_text(card(c.task, model_config(c), truth))
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(TASKS), action="append", help="only these (default: all)")
    parser.add_argument("--check", action="store_true", help="compile and compare with the shipped files; write nothing")
    args = parser.parse_args(argv)
    for name in args.model or list(TASKS):
        task = TASKS[name]
        c = compile_task(task)
        if args.check:
            shipped = task.directory / "model.safetensors"
            from safetensors.torch import load_file

            ours = bridge_state_dict(c)
            theirs = load_file(str(shipped))
            same = ours.keys() == theirs.keys() and all(bool((ours[k] == theirs[k]).all()) for k in ours)
            truth = ground_truth(c)
            shipped_truth = json.loads((task.directory / GROUND_TRUTH_FILE).read_text())
            same_truth = all(truth[k] == shipped_truth[k] for k in truth)
            print(f"{name}: weights {'identical' if same else 'DIFFER'}, ground truth {'identical' if same_truth else 'DIFFERS'}")
            if not (same and same_truth):
                return 1
        else:
            measured = write(c, task.directory)
            print(f"{name}: {measured['inputs']} inputs checked, residual stream within "
                  f"{measured['max_abs_residual_difference']:.1e} of Tracr's -> {task.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
