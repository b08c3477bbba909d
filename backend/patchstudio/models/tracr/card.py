"""CARD.md of a compiled Tracr model, written by compile.py from the task, its config and its
ground truth (so the card states what the shipped files hold, and says it again after a recompile)."""

from __future__ import annotations

from patchstudio.models.tracr import TracrTask

WHAT = {
    "tracr-reverse": (
        "`reverse`: the input words in reverse order. Output at position i (0-based, after `<bos>`) "
        "of an n-word input is word n-1-i; at the final position it is the **first word**.",
        "length = SelectorWidth(Select(tokens, tokens, TRUE)); opp_idx = length - indices; "
        "opp_idx-1 = opp_idx - 1; reverse = Aggregate(Select(indices, opp_idx-1, EQ), tokens)",
    ),
    "tracr-proportion": (
        "`frac_prevs` (ACDC's \"xproportion\"): at position i, the fraction of the words 0..i that are "
        "\"x\"; at the final position, the **fraction of all the words that are \"x\"**.",
        'bools = numerical(Map(lambda t: t == "x", tokens)); '
        "frac_prevs = numerical(Aggregate(Select(indices, indices, LEQ), bools, default=0))",
    ),
    "tracr-sort": (
        "`sort`: the input numbers in ascending order (ties kept in input order). Output at position i "
        "is the (i+1)-th smallest; at the final position it is the **largest number**.",
        "keys = SequenceMap(lambda x, i: x + min_key * i / max_seq_len, tokens, indices) (unique keys); "
        "target_pos = SelectorWidth(Select(keys, keys, LT)); "
        "sort = Aggregate(Select(target_pos, indices, EQ), tokens)",
    ),
}


def _variables(labels: list[str]) -> str:
    names = sorted({lab.split(":")[0] for lab in labels})
    return ", ".join(f"`{n}`" for n in names) or "nothing"


def card(task: TracrTask, config: dict, truth: dict) -> str:
    from patchstudio.models.tracr.prompts import FAMILIES

    what, rasp = WHAT[task.name]
    compiled = truth["compiled"]
    nodes = {n["name"]: n for n in truth["nodes"]}
    circuit = set(truth["circuit_nodes"])
    outputs = " ".join(f"`{o}`" for o in task.outputs)
    rows = []
    for name, node in nodes.items():
        if node["kind"] == "input":
            continue
        reads = "; ".join(f"{k}: {_variables(v)}" for k, v in node["reads"].items()) if any(node["reads"].values()) else "nothing"
        in_circuit = "yes" if name in circuit else ("—" if node["kind"] == "logits" else "no (zero weights)")
        rows.append(f"| `{name}` | {reads} | {_variables(node.get('writes', [])) if node['kind'] != 'logits' else '—'} | {in_circuit} |")
    edges = "\n".join(
        f"* `{e['name']}` via {_variables(e['via'])}" + (" (constant: Tracr's `one`)" if e["constant"] else "")
        for e in truth["edges"]
    )
    env = ", ".join(f"{k} {v}" for k, v in compiled["environment"].items())
    if task.numerical:
        s = task.logit_scale
        logits = (
            f"The program's output is one residual coordinate v (`{_output_label(truth)}`). "
            f"The unembedding scores each possible value c (the tokens {outputs}) as\n\n"
            f"    logit(c) = {s} * (2 c v - c^2)      (c^2 read from Tracr's constant `one` direction)\n\n"
            "so the argmax is the value nearest to v (the model's output, exactly the program's on every "
            f"input: distinct values are at least 1/20 apart), and every other token's logit is -{s} "
            "(below the value 0's, which is 0). For an answer c1 and a wrong answer c2,\n\n"
            f"    logit_diff = {s} (c1 - c2) (2 v - c1 - c2)\n\n"
            f"is affine in v: on the clean prompt (v = c1) it is {s} (c1 - c2)^2, on the corrupted one (v = c2) "
            f"-{s} (c1 - c2)^2, that is +1 and -1 for the family's pairs (c1 - c2 = 1/{task.max_seq_len}). For one pair, "
            "`normalized_logit_diff` = (v - c2) / (c1 - c2): the share of the change in the program's output "
            "that a patch restores. `prob`, `loss` and `kl` are defined (a softmax over these logits) but "
            "have no meaning for the program; use the logit difference."
        )
    else:
        logits = (
            f"The logit of each output token t ({outputs}) is the residual coordinate `{_output_label(truth)}:t` "
            "at that position: 1 for the program's output and 0 for the other values (to float precision), so the "
            "argmax is the program's output; every other token's logit is exactly 0. For an answer and a wrong "
            "answer, `logit_diff` = out[answer] - out[wrong]: +1 on the clean prompt and -1 on the corrupted one "
            "of the family's pairs; `normalized_logit_diff` is 0 at the corrupted run and 1 at the clean one. "
            "`prob`, `loss` and `kl` are defined (a softmax over logits in [0, 1]) but have no meaning for the "
            "program; use the logit difference."
        )
    family, note = FAMILIES[task.name]
    return f"""# {task.name}

**Compiled, not trained.** These weights are what Tracr (Lindner et al. 2023, `tracr-pypi`)
assigns to the RASP program `{task.program}` from `tracr.compiler.lib`, converted to a
TransformerLens-native `TransformerBridge` by `python -m patchstudio.models.tracr.compile`. There
is no data, no optimisation and no approximation beyond Tracr's own (its MLPs' and attention's
large finite weights); every block's job is known, so its ground-truth circuit is known
(`ground_truth.json`).

## Program

{what}

RASP: {rasp}.

## Inputs

1 to {task.max_seq_len} words from {" ".join(f"`{w}`" for w in task.vocab)}, separated by spaces
(e.g. `{" ".join(task.vocab[:3])}`). The tokenizer (word level, split on whitespace) prepends
`<bos>`, Tracr's BOS token, so `model.to_tokens` gives `[<bos>, word, ...]`; n_ctx is
{config["n_ctx"]}. `<pad>` is embedded as Tracr embeds its PAD token; `<unk>` and the
output-only tokens have zero embeddings: they are not inputs, and the program says nothing about them.

## Outputs and metrics

{logits}

## Architecture

TransformerLens-native (`TransformerBridge.boot_native`), as Tracr compiled it: {config["n_layers"]}
layer(s), {config["n_heads"]} head(s) per layer, d_model {config["d_model"]} (one dimension per residual
variable value: `ground_truth.json` lists them), d_head {config["d_head"]}, d_mlp {config["d_mlp"]},
ReLU, no LayerNorm, learned absolute positions (position 0, `<bos>`, embeds as zero),
{config["attention_dir"]} attention{" (compiled with causal=True: the program only looks back)" if task.causal else " (the program reads later positions)"},
d_vocab {config["d_vocab"]} = d_vocab_out. Tracr's layer L is block L: its attention, then its MLP;
a layer Tracr leaves without attention or without an MLP keeps zero weights, as do head slots
it does not use.

| node | reads | writes | in the circuit |
| --- | --- | --- | --- |
{chr(10).join(rows)}

## Ground truth

Derived by compile.py from Tracr's craft model, not by hand: the residual directions each
block's maps read and write, and an edge sender -> receiver input wherever the sender writes a
direction the receiver reads. {len(truth["edges"])} edges; circuit nodes (on a path from the input to the
logits): {", ".join(f"`{n}`" for n in truth["circuit_nodes"])}. Layout: docs/tracr-models.md.

{edges}

## Prompt family

`patchstudio.models.tracr.prompts.{family.__name__}`: {family.__doc__.strip().replace(chr(10) + "    ", " ")}
{note}

## How it was made

`PYTHONPATH=backend python -m patchstudio.models.tracr.compile --model {task.name}` in an
environment with the `tracr` extra ({env}). The script checked the converted model on all
{compiled["check"]["inputs"]} inputs of 1 to {task.max_seq_len} words: its output equals Tracr's and
RASP's evaluator's on every one, and its final residual stream is within
{compiled["check"]["max_abs_residual_difference"]:.1e} of Tracr's. Weights: `model.safetensors`
(sha256 `{compiled["weights_sha256"]}`).
"""


def _output_label(truth: dict) -> str:
    reads = next(n for n in truth["nodes"] if n["kind"] == "logits")["reads"]["in"]
    return next(lab for lab in reads if lab != "one").split(":")[0]
