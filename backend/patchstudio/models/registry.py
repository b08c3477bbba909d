"""Loading models by name: a shipped built-in model ("default", "hydra"), or any TransformerLens-supported Hugging Face
model whose weights are reachable (local Hugging Face cache, a local directory, or the network)."""

from __future__ import annotations

import hashlib
import os

import torch

from patchstudio.models.default_model import BUILTIN_MODELS


class ModelUnavailableError(RuntimeError):
    """A model that cannot be loaded here; the message says which and how to get it."""


def load_model(name: str = "default", *, device: str = "cpu"):
    """A TransformerBridge in eval mode. ``"default"`` is the shipped IOI/induction model,
    ``"hydra"`` the same trained with head dropout (it shows self-repair); see BUILTIN_MODELS."""
    if name in BUILTIN_MODELS:
        from patchstudio.models.default_model import load_default_model

        return load_default_model(BUILTIN_MODELS[name], device=device)
    return _load_hf(name, device)


def _load_hf(name: str, device: str):
    from transformer_lens.model_bridge import TransformerBridge

    try:
        model = TransformerBridge.boot_transformers(name, device=device)
    except (OSError, ValueError, EnvironmentError) as exc:
        cache = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
        raise ModelUnavailableError(
            f"model {name!r} could not be loaded: its weights are neither in the Hugging Face cache "
            f"({cache}) nor reachable over the network. On a machine with internet access run "
            f"`huggingface-cli download {name}` and copy the cache here (or point HF_HOME at it), "
            f"or give the path of a directory saved with save_pretrained. ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return model.eval()


def model_fingerprint(model) -> str:
    """sha256 over the model's parameters (names, shapes and bytes): which weights made a result."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for pname, param in sorted(model.state_dict().items()):
            digest.update(pname.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
