"""A family model loaded by name from the Hugging Face cache, offline, through the command line,
with answers of several tokens: the way a user runs a model they downloaded once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import patchstudio
from family_models import MULTI_TOKEN_PAIRS
from patchstudio.engine.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(hf_home: Path, repo_id: str, directory: Path) -> None:
    """The layout `hf download` writes: hub/models--org--name/{snapshots/<rev>/..., refs/main}."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(directory, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)


def test_loads_by_name_from_the_hub_cache_offline_through_the_cli(tmp_path, family_dirs, family_models):
    hf_home = tmp_path / "hf_home"
    _hub_cache(hf_home, "tiny-org/tiny-qwen2", family_dirs("qwen2"))
    spec = {"model": "tiny-org/tiny-qwen2", "prompts": MULTI_TOKEN_PAIRS, "component": "head", "metric": "loss"}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    backend = str(Path(patchstudio.__file__).resolve().parents[1])  # this checkout's package, not another install
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([backend, os.environ.get("PYTHONPATH", "")])}
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "PATCHSTUDIO_DEVICE", "PATCHSTUDIO_DTYPE"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "patchstudio.cli", "run", str(spec_file), "-q"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["model"]["name"] == "tiny-org/tiny-qwen2"
    assert (out["model"]["architecture"], out["model"]["device"], out["model"]["dtype"]) == ("Qwen2ForCausalLM", "cpu", "float32")
    assert out["prompts"][0]["answer"] == "Mary Ann"
    # the same weights loaded from their directory give the same numbers (equal to teacher forcing:
    # tests/engine/test_families.py)
    expected = run(family_models("qwen2"), spec)
    assert torch.allclose(torch.tensor(out["values"]), torch.tensor(expected.values), atol=1e-5)
    assert out["clean"] == expected.clean or abs(out["clean"] - expected.clean) < 1e-5
