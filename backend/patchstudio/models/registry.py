"""Loading models by name: a shipped built-in model ("default", "hydra"), or any TransformerLens-supported Hugging Face
model whose weights are reachable (local Hugging Face cache, a local directory, or the network)."""

from __future__ import annotations

import hashlib
import os

import torch

from patchstudio.models.default_model import BUILTIN_MODELS
from patchstudio.models.tracr import TRACR_MODELS


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here; the message says which and how to get it."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(name: str = "default", *, device: str = "cpu", dtype: str = "float32"):
    """A TransformerBridge in eval mode, on ``device`` in ``dtype`` (float32, bfloat16 or float16).
    A built-in name (``BUILTIN_MODELS``: ``"default"``, the shipped IOI/induction model; or a
    compiled Tracr model of ``TRACR_MODELS``: ``"tracr-reverse"``, ...) loads its shipped weights;
    anything else is a Hugging Face model name (from the cache or the network) or a directory
    saved with ``save_pretrained``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if name in TRACR_MODELS:  # compiled by Tracr and shipped, in the built-in models' file layout
        from patchstudio.models.default_model import load_default_model

        model = load_default_model(TRACR_MODELS[name], device=device)
        return model if dtype == "float32" else model.to(DTYPES[dtype]).eval()
    if name in BUILTIN_MODELS:
        from patchstudio.models.default_model import WEIGHTS_FILE, load_default_model

        directory = BUILTIN_MODELS[name]
        if not (directory / WEIGHTS_FILE).exists():
            raise ModelUnavailableError(
                f"the built-in model {name!r} has no trained weights in this installation; "
                f"`patchstudio train-default --model {name}` trains them"
            )
        model = load_default_model(directory, device=device)
        return model if dtype == "float32" else model.to(DTYPES[dtype]).eval()
    return _load_hf(name, device, DTYPES[dtype])


def download_command(name: str) -> str:
    """The download command of the installed huggingface_hub: ``hf download`` (1.0 and later) or
    ``huggingface-cli download`` (before)."""
    from importlib.metadata import entry_points

    scripts = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("huggingface_hub")}
    return f"hf download {name}" if "hf" in scripts or not scripts else f"huggingface-cli download {name}"


def _load_hf(name: str, device: str, dtype: torch.dtype = torch.float32):
    from transformer_lens.model_bridge import TransformerBridge

    try:
        model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        cache = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        raise ModelUnavailableError(
            f"model {name!r} could not be loaded: its weights are neither in the Hugging Face cache "
            f"({cache}) nor reachable over the network. On a machine with internet access run "
            f"`{download_command(name)}` and copy the cache here (or point HF_HOME at it), "
            f"or give the path of a directory saved with save_pretrained. ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return model.eval()


def describe_model(model) -> dict[str, object]:
    """What the model picker shows: architecture, parameter count, layers x heads, dtype."""
    cfg = model.cfg
    arch = getattr(cfg, "architecture", None) or "TransformerLens native"
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "architecture": str(arch),
        "n_params": int(n_params),
        "shape": f"{int(cfg.n_layers)} layers x {int(cfg.n_heads)} heads, d_model {int(cfg.d_model)}",
        "dtype": str(model.W_U.dtype).removeprefix("torch."),
    }


def format_params(n: int) -> str:
    """1234567 -> '1.2M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def model_fingerprint(model) -> str:
    """sha256 over the model's parameters (names, shapes and bytes): which weights made a result."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for pname, param in sorted(model.state_dict().items()):
            digest.update(pname.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
