"""The JSON API: runs, their .json and .csv twins, errors, the store and the allow-list."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from patchstudio.engine.run import run
from web_helpers import IOI, IOI_CORRUPTED, make_client

SPEC = {"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}], "component": "head"}


def test_post_runs_returns_the_engine_result_and_the_json_twin_agrees(client, tiny_model):
    response = client.post("/api/runs", json=SPEC)
    assert response.status_code == 200
    body = response.json()
    expected = run(tiny_model, SPEC)
    assert body["id"] == expected.id
    assert torch.allclose(torch.tensor(body["values"]), torch.tensor(expected.values), atol=1e-6)
    assert body["axes"] == ["layer", "head"] and body["clean"] == pytest.approx(expected.clean)
    twin = client.get(f"/runs/{body['id']}.json")
    assert twin.status_code == 200 and twin.headers["content-type"].startswith("application/json")
    assert twin.json() == body


def test_same_spec_same_link_served_from_the_store(client):
    first = client.post("/api/runs", json=SPEC).json()
    reordered = {"component": "head", "method": "activation_patching", "direction": "denoise", **SPEC}
    second = client.post("/api/runs", json=reordered).json()
    assert second["id"] == first["id"]
    assert second["created_at"] == first["created_at"]  # not recomputed
    assert len(client.get("/api/runs").json()) == 1


def test_links_survive_a_restart(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model) as c:
        body = c.post("/api/runs", json=SPEC).json()
    with make_client(tmp_path, tiny_model) as c:
        again = c.get(f"/runs/{body['id']}.json")
    assert again.status_code == 200 and again.json()["values"] == body["values"]


def test_record_keeps_model_fingerprint_and_versions(client):
    body = client.post("/api/runs", json=SPEC).json()
    assert len(body["model_fingerprint"]) == 64
    assert set(body["versions"]) == {"patchstudio", "transformer-lens", "torch"}
    assert body["model"]["name"] == "default"


@pytest.mark.parametrize(
    "change, status, words",
    [
        ({"prompts": [{"clean": IOI, "corrupted": "When Mary and John went to the store gave a drink to", "answer": "Mary", "wrong": "John"}]},
         422, ["same number of tokens", "first differ at position"]),
        # answers of several tokens are scored by activation patching and ablation; the others refuse them
        ({"method": "attribution_patching", "prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary Alice",
                                                         "wrong": "John"}]}, 422, ["2 tokens", "needs a single-token answer"]),
        ({"model": "gpt2"}, 422, ["unknown model 'gpt2'", "this server offers default"]),
        ({"model": "/etc/passwd"}, 422, ["unknown model '/etc/passwd'"]),
        ({"prompts": []}, 422, ["prompts", "empty"]),
        ({"colour": "red"}, 422, ["colour", "Extra inputs are not permitted"]),
        ({"component": "neuron"}, 422, ["component"]),
    ],
)
def test_bad_input_gets_a_message_that_names_the_problem(client, change, status, words):
    response = client.post("/api/runs", json={**SPEC, **change})
    assert response.status_code == status
    detail = response.json()["detail"]
    for word in words:
        assert word in detail


def test_over_budget_sweep_is_refused(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, max_patched_runs=10) as c:
        response = c.post("/api/runs", json={**SPEC, "positions": "each"})
    assert response.status_code == 422
    assert "over the budget of 10" in response.json()["detail"]


def test_csv_export_has_a_row_per_cell(client):
    body = client.post("/api/runs", json={**SPEC, "component": "resid_pre", "positions": "each"}).json()
    response = client.get(f"/runs/{body['id']}.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert len(rows) == 2 * 15
    assert rows[16]["layer"] == "1" and rows[16]["pos"] == "1" and rows[16]["token"] == "When"
    assert float(rows[16]["value"]) == pytest.approx(body["values"][1][1])


def test_json_and_csv_twins_carry_the_spread_per_prompt_values_and_warnings(client):
    from helpers import TINY_PAIRS

    body = client.post("/api/runs", json={"method": "ablation", "prompts": TINY_PAIRS, "component": "layer"}).json()
    stored = client.get(f"/runs/{body['id']}.json").json()
    for key in ("per_prompt", "std", "ci_low", "ci_high", "reference", "warnings"):
        assert stored[key] == body[key], key
    assert len(stored["per_prompt"]) == 2 and len(stored["std"]) == 2
    assert stored["reference"]["kind"] == "own" and any("own clean and corrupted" in w for w in stored["warnings"])
    rows = list(csv.DictReader(io.StringIO(client.get(f"/runs/{body['id']}.csv").text)))
    assert list(rows[0]) == ["layer", "value", "change", "share", "std", "ci_low", "ci_high", "prompt_1", "prompt_2"]
    for layer, row in enumerate(rows):
        assert float(row["value"]) == pytest.approx(body["values"][layer])
        assert float(row["std"]) == pytest.approx(body["std"][layer])
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((body["ci_low"][layer], body["ci_high"][layer]))
        assert [float(row["prompt_1"]), float(row["prompt_2"])] == pytest.approx([p[layer] for p in body["per_prompt"]])


@pytest.mark.parametrize(
    "extra", [{}, {"direction": "noise"}, {"method": "ablation"}], ids=["denoise", "noise", "ablation"])
def test_csv_change_and_share_columns_by_hand(client, extra):
    """change = value − "no effect" (denoising: the corrupted run; noising and ablation: the clean
    run), share = the part of the clean−corrupted gap moved: restored when denoising, destroyed
    otherwise. Read by column name, so a swap of the two columns fails here."""
    from helpers import TINY_PAIRS

    body = client.post("/api/runs", json={"prompts": TINY_PAIRS, "component": "head", **extra}).json()
    clean, corrupted = body["clean"], body["corrupted"]
    base = corrupted if not extra else clean
    rows = list(csv.DictReader(io.StringIO(client.get(f"/runs/{body['id']}.csv").text)))
    assert len(rows) == 2 * 4
    for row in rows:
        value = body["values"][int(row["layer"])][int(row["head"])]
        share = (value - corrupted) / (clean - corrupted) if not extra else (clean - value) / (clean - corrupted)
        assert float(row["value"]) == pytest.approx(value)
        assert float(row["change"]) == pytest.approx(value - base, abs=1e-9)
        assert float(row["share"]) == pytest.approx(share, abs=1e-7)
    assert max(abs(float(r["share"]) - float(r["change"])) for r in rows) > 1e-3  # the two columns can be told apart


def test_unknown_run_is_404(client):
    assert client.get("/runs/0000000000000000.json").status_code == 404
    assert client.get("/runs/0000000000000000.csv").status_code == 404


def test_healthz_readyz_and_openapi(client):
    health = client.get("/healthz")  # liveness: no details
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "models": {"default": "loaded"}}}
    assert "/api/runs" in client.get("/openapi.json").json()["paths"]


def test_concurrent_requests_never_see_each_others_hooks(client, tiny_model):
    """Eight different experiments at once on the one shared model equal each computed alone."""
    specs = []
    for component in ("head", "head_q", "resid_pre", "mlp_out"):
        for direction in ("denoise", "noise"):
            specs.append({**SPEC, "component": component, "positions": "each", "direction": direction})
    alone = [run(tiny_model, s).values for s in specs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda s: client.post("/api/runs", json=s), specs))
    for response, expected in zip(responses, alone):
        assert response.status_code == 200
        assert torch.allclose(torch.tensor(response.json()["values"]), torch.tensor(expected), atol=1e-5)


def test_csv_of_a_result_stored_before_the_spread_existed_leaves_those_columns_empty(tiny_model):
    import datetime as dt

    from helpers import TINY_PAIRS
    from patchstudio.results import PatchResult
    from patchstudio.store import StoredRun
    from patchstudio.web.routes.runs import values_csv

    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "layer"})
    old = {k: v for k, v in result.model_dump(mode="json").items() if k not in ("per_prompt", "std", "ci_low", "ci_high", "reference", "warnings")}
    legacy = PatchResult.model_validate(old)
    assert legacy.per_prompt is None and legacy.warnings == []
    stored = StoredRun(id=result.id, method="activation_patching", model_name="default", model_fingerprint="x",
                       patchstudio_version="0", transformer_lens_version="0", created_at=dt.datetime.now(dt.timezone.utc), result=legacy)
    rows = list(csv.DictReader(io.StringIO(values_csv(stored))))
    assert rows[0]["std"] == "" and rows[0]["prompt_2"] == "" and float(rows[0]["value"]) == pytest.approx(result.values[0])
