"""The circuit method's cost on the GPT-2-small-shaped random model and the 16-token IOI-shaped pair.

What is timed (best of R, in one process; see bench/README.md for the figures):

- one forward pass (the clean prompt, full logits): the unit;
- ``run`` of the circuit method (noising, logit difference), after one untimed-for-the-table first
  run that pays what a model pays once (the graph's check on probe tokens, its edge list), its phases timed inside it by wrapping
  the engine's three sweeps: the EAP / EAP-IG gradient pass (``receiver_gradients``), the exact
  top-k edges (``edge_sweep``), the faithfulness ladder (``circuit_sweep``); the rest (tokenizing,
  the clean and corrupted cached runs, sender outputs, scores) is reported as "setup";
- one sweep for scale: activation patching of every head at all positions (144 patches);
- the peer: a per-edge path-patching loop written with plain hooks (tests/circuit_references.py:
  one full forward pass per edge, the model's own modules computing the receiver's input), on a
  sample of the top-k edges, scaled to all of them, and its values against the engine's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import circuit_references as R  # noqa: E402  (the tests' plain-hook reference is the peer)
from bench_patching import build_model, prompt_pair  # noqa: E402

from patchstudio.engine.edge_graph import Graph  # noqa: E402
from patchstudio.engine.methods import circuit as circuit_method  # noqa: E402
from patchstudio.engine.run import run  # noqa: E402

# wall-clock seconds, or with --clock cpu this process's CPU seconds (all its threads): on a shared
# machine the wall clock counts the waits for a core, which move with the other processes' load
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def clock() -> float:
    return _clock[0]()


PHASES = {"receiver_gradients": "gradient pass", "edge_sweep": "exact top-k", "circuit_sweep": "faithfulness ladder"}


def timed_phases():
    """Wrap the circuit method's sweeps so each call's seconds add up in the returned dict."""
    seconds = {name: 0.0 for name in PHASES}
    for name in PHASES:
        original = getattr(circuit_method, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            start = clock()
            try:
                return _original(*args, **kwargs)
            finally:
                seconds[_name] += clock() - start

        setattr(circuit_method, name, wrapper)
    return seconds


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        start = clock()
        out = fn()
        times.append(clock() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--ig-steps", type=int, default=5)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall seconds, or this process's CPU seconds (steadier under others' load)")
    parser.add_argument("--sample", type=int, default=10, help="edges the plain-hook loop runs (scaled to top-k)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _clock[0] = CLOCKS[args.clock]
    model = build_model()
    pair = prompt_pair("ioi")
    graph = Graph.of(model)
    print(f"torch {torch.__version__}, {args.threads} threads, load {os.getloadavg()[0]:.1f}; "
          f"{len(graph.edges):,} edges; IOI-shaped pair, 16 tokens; {args.clock} clock")

    tokens = model.to_tokens(pair["clean"])
    with torch.no_grad():
        fwd, _ = best(lambda: model(tokens), args.repeat + 2)
    print(f"one forward pass: {fwd * 1e3:.1f} ms")

    clocks = timed_phases()

    def circuit(steps: int, top_k: int):
        clocks.update({name: 0.0 for name in clocks})
        total, result = best(lambda: run(model, {"method": "circuit", "prompts": [pair], "steps": steps,
                                                  "top_k": top_k}), 1)
        return total, dict(clocks), result

    heads, _ = best(lambda: run(model, {"prompts": [pair], "component": "head", "positions": "all"}), args.repeat)
    once, _, _ = circuit(1, 0)  # what a model pays once: the graph's check, its edges and names, its stacked weights
    print(f"first circuit run (EAP; the graph checked and listed once per model): {once:.3f} s = {once / fwd:.1f} passes")
    print(f"one sweep (activation patching, 144 heads, all positions): {heads:.3f} s = {heads / fwd:.1f} passes")
    for steps, top_k in ((1, 0), (args.ig_steps, 0), (1, args.top_k)):
        with torch.no_grad():  # the unit again beside each run: the shared machine's load moves
            fwd, _ = best(lambda: model(tokens), 3)
        runs = [circuit(steps, top_k) for _ in range(args.repeat)]
        total, seconds, result = min(runs, key=lambda r: r[0])
        setup = total - sum(seconds.values())
        what = "EAP" if steps == 1 else f"EAP-IG ({steps} steps)"
        print(f"\n{what}, top_k {top_k}: total {total:.3f} s ({total / fwd:.1f} passes of {fwd * 1e3:.0f} ms, "
              f"load {os.getloadavg()[0]:.1f})")
        print(f"  setup (cached runs, sender outputs, scores) {setup:.3f} s = {setup / fwd:.1f} passes")
        for name, label in PHASES.items():
            print(f"  {label}: {seconds[name]:.3f} s = {seconds[name] / fwd:.1f} passes = {seconds[name] / heads:.2f} sweeps")
        print(f"  edge scores (setup + gradient pass): {(setup + seconds['receiver_gradients']) / fwd:.1f} passes")
    # the peer: one plain-hook forward pass per edge, on a sample of the verified edges
    exact = result.extras["exact"]
    sample = exact["edges"][:: max(1, len(exact["edges"]) // args.sample)][: args.sample]
    corrupted = model.to_tokens(pair["corrupted"])
    answer, wrong = (int(model.to_single_token(pair[k])) for k in ("answer", "wrong"))
    clean_out, corrupted_out = R.sender_outputs(model, tokens), R.sender_outputs(model, corrupted)
    deltas = {s: corrupted_out[s] - clean_out[s] for s in clean_out}
    start = clock()
    values = [R.edge_value(model, tokens, graph.edges[e], deltas, answer, wrong) for e in sample]
    loop = (clock() - start) / len(sample) * len(exact["edges"])
    got = [exact["values"][exact["edges"].index(e)] for e in sample]
    diff = max(abs(a - b) for a, b in zip(values, got))
    print(f"\nplain-hook per-edge loop, {len(exact['edges'])} edges (from {len(sample)}): {loop:.3f} s = "
          f"{loop / fwd:.1f} passes; max |diff| vs the engine's exact values {diff:.1e}")


if __name__ == "__main__":
    main()
