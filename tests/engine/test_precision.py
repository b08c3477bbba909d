"""Device and dtype: half precision on CPU (runs in CI), CUDA where a GPU is present (marked ``cuda``).

Results record the device and dtype they were computed in; in half precision a result whose
clean-corrupted gap or cell effects are within the dtype's rounding noise says so.
"""

from __future__ import annotations

import pytest
import torch

import patchstudio
from family_models import PAIRS
from patchstudio.engine.precision import CPU_CHUNK_ROWS, auto_chunk_rows, noise_floor
from patchstudio.engine.run import run

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"prompts": PAIRS, "component": "head"}


@pytest.fixture(scope="module")
def llama_dir(family_dirs):
    return str(family_dirs("llama"))


@pytest.fixture(scope="module")
def float32_result(family_models):
    return run(family_models("llama"), SPEC)


def test_float32_records_device_and_dtype_and_warns_of_nothing(float32_result):
    assert (float32_result.model.device, float32_result.model.dtype) == ("cpu", "float32")
    assert float32_result.model.architecture == "LlamaForCausalLM"
    assert float32_result.warnings == []


def test_bfloat16_on_cpu_tracks_float32_within_its_noise(llama_dir, float32_result):
    model = patchstudio.load_model(llama_dir, dtype="bfloat16")
    assert model.W_U.dtype == torch.bfloat16
    result = run(model, SPEC)
    assert (result.model.device, result.model.dtype) == ("cpu", "bfloat16")
    got, ref = torch.tensor(result.values), torch.tensor(float32_result.values)
    with torch.no_grad():
        scale = float(model(model.to_tokens(PAIRS[0]["clean"]))[0, -1].float().abs().max())
    noise = noise_floor(model, scale)
    assert 0.01 < noise < 1.0  # 4 * 2^-7 * the largest logit
    assert (got - ref).abs().max() < 4 * noise, ((got - ref).abs().max(), noise)
    assert result.clean == pytest.approx(float32_result.clean, abs=4 * noise)
    # some heads of a random model barely matter: their effects are within the noise, and it says so
    effects = (ref - float32_result.corrupted).abs()
    if (effects < noise).any():
        assert any("cells have effects within bfloat16's rounding noise" in w for w in result.warnings)


def test_half_precision_warns_when_the_gap_is_within_noise(llama_dir):
    model = patchstudio.load_model(llama_dir, dtype="bfloat16")
    same = [{**p, "corrupted": p["clean"]} for p in PAIRS]  # no gap at all
    result = run(model, {"prompts": same, "component": "resid_pre"})
    noise = [w for w in result.warnings if w.startswith("the clean-corrupted gap (0) is within bfloat16's rounding noise")]
    assert len(noise) == 1 and "PATCHSTUDIO_DTYPE=float32" in noise[0]


def test_float16_loads_and_runs(llama_dir):
    model = patchstudio.load_model(llama_dir, dtype="float16")
    result = run(model, {"prompts": PAIRS[:1], "component": "resid_pre"})
    assert result.model.dtype == "float16"
    assert all(v == v for v in result.values)  # no NaN


def test_unknown_dtype_is_refused(llama_dir):
    with pytest.raises(ValueError, match="dtype 'float8': use one of float32, bfloat16, float16"):
        patchstudio.load_model(llama_dir, dtype="float8")


def test_chunk_rows_default_on_cpu_and_override(family_models):
    model = family_models("llama")
    assert auto_chunk_rows(model, 12, full_vocab=True) == CPU_CHUNK_ROWS
    seen = []
    run(model, {"prompts": PAIRS[:1], "component": "head"}, chunk_rows=3, progress=lambda done, total: seen.append(done))
    # the setting stays an override: 8 head patches, never more than 3 rows in one pass
    steps = [b - a for a, b in zip([0, *seen], seen)]
    assert seen[-1] == 8 and max(steps) <= 3 and len(steps) >= 3


# --- CUDA (skipped without a GPU; none was lent to the task that wrote them) ------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_equals_cpu(llama_dir, float32_result, dtype):
    model = patchstudio.load_model(llama_dir, device="cuda", dtype=dtype)
    result = run(model, SPEC)
    assert result.model.device.startswith("cuda") and result.model.dtype == dtype
    got, ref = torch.tensor(result.values), torch.tensor(float32_result.values)
    tol = 1e-4 if dtype == "float32" else 4 * noise_floor(model, 10.0)
    assert (got - ref).abs().max() < tol


@pytest.mark.cuda
def test_cuda_chunk_rows_adapt_to_free_memory(llama_dir):
    model = patchstudio.load_model(llama_dir, device="cuda")
    rows = auto_chunk_rows(model, 12, full_vocab=True)
    assert 1 <= rows <= 4096
    free, _ = torch.cuda.mem_get_info()
    assert rows == 4096 or rows < free  # bounded by memory, not the CPU default
