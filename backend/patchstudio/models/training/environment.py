"""The environment a bit-for-bit retrain must match, and the retrain's one-line verdict.

The packages whose float arithmetic the weights depend on, Python, the CPU and the instruction set
torch dispatches to are recorded in each model's metrics.json (and named on its card); a retrain
compares its weights and its environment with the shipped ones.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ..default_model import weights_fingerprint
from .recipes import RECIPES

# The packages whose float arithmetic the weights depend on. Bit-for-bit reproduction needs the
# same versions, seed, thread count and CPU instruction set: any of them can change the last bits
# of one operation, and training amplifies that into different weights (with the same figures).
NUMERIC_PACKAGES = ("torch", "transformer-lens", "transformers", "tokenizers", "numpy", "safetensors")


def environment() -> dict:
    """What a bit-for-bit retrain must match: package versions, Python, the CPU's model name and the
    instruction set torch dispatches to."""
    import importlib.metadata
    import sys

    cpu = platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "packages": {name: importlib.metadata.version(name) for name in NUMERIC_PACKAGES},
        "python": sys.version.split()[0],
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def environment_summary(env: dict | None) -> str:
    if not env:
        return "not recorded"
    pkgs = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return f"{pkgs}; Python {env['python']}; {env['cpu']} ({env['cpu_capability']})"


def reproduction_report(name: str, metrics: dict, shipped_print: str | None, shipped_env: dict | None,
                        default_settings: bool = True) -> str:
    """One line: did this retrain give the shipped weights, and if not, what may explain it."""
    got = metrics["model"]["fingerprint"]
    if shipped_print is None:
        return f"{name}: sha256 {got} (no shipped weights to compare with)"
    if got == shipped_print:
        return f"{name}: sha256 {got}, the shipped weights bit for bit"
    why = []
    if not default_settings:
        why.append("a seed or step count other than the recipe's")
    init = metrics["training"].get("init_from")
    if init and init["fingerprint"] != weights_fingerprint(RECIPES[init["model"]].directory):
        why.append(f"it started from {init['model']} weights other than the shipped ones")
    env = metrics["training"].get("environment")
    if env != shipped_env:
        why.append(f"this environment ({environment_summary(env)}) is not the shipped one's ({environment_summary(shipped_env)})")
    return (f"{name}: sha256 {got} differs from the shipped {shipped_print}"
            + (f": {'; '.join(why)}" if why else " in the same recorded environment: please report it"))

