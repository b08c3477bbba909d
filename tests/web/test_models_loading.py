"""Models loaded while the server runs (model_manager.py, routes/models.py): the states a model goes
through, the named refusals while it loads or is not loaded, the memory budget's least-recently-used
rule on the shipped models (default, hydra, the Tracr ones), a job that keeps its model until it has
finished, and a job's worker that loads its model on demand."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from helpers import TINY_PAIRS
from patchstudio.jobs import open_queue
from patchstudio.settings import Settings
from patchstudio.web.app import create_app
from web_helpers import HTMX

SPEC = {"prompts": TINY_PAIRS[:1], "component": "head"}


def wait_for(predicate, timeout: float = 60.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def states(client) -> dict[str, dict]:
    return {m["name"]: m for m in client.get("/api/models").json()["models"]}


def app_client(tmp_path, loader=None, **settings) -> TestClient:
    options = {"database_url": f"sqlite:///{tmp_path}/runs.sqlite3", "allowed_hosts": ["testserver"], **settings}
    return TestClient(create_app(Settings(**options), model_loader=loader))


@pytest.fixture
def gated(tmp_path, tiny_model):
    """"default" loads at start; "other" loads only when the test opens its gate; "broken" fails
    with an error that names a path."""
    gate = threading.Event()

    def loader(name):
        if name == "broken":
            raise OSError("[Errno 2] No such file: '/srv/secret/weights/model.safetensors'")
        if name == "other":
            assert gate.wait(60)
        return tiny_model

    with app_client(tmp_path, loader, models=["default", "other", "broken"], models_at_start=["default"]) as c:
        yield c, gate


def test_states_from_not_loaded_through_loading_to_loaded_and_back(gated):
    client, gate = gated
    first = states(client)
    assert {n: m["state"] for n, m in first.items()} == {"default": "loaded", "other": "not loaded", "broken": "not loaded"}
    assert states(client)["other"]["state"] == "not loaded"  # a GET never loads anything
    refused = client.post("/api/runs", json={**SPEC, "model": "other"})
    assert refused.status_code == 409 and refused.json()["field"] == "model"
    assert "model 'other' is not loaded on this server now" in refused.json()["detail"]

    started = client.post("/api/models/other/load")
    assert started.status_code == 202 and started.json()["state"] == "loading"
    loading = wait_for(lambda: states(client)["other"]["phase"] == "reading weights" and states(client)["other"], what="the load")
    assert loading["state"] == "loading" and loading["seconds"] >= 0
    during = client.post("/api/runs", json={**SPEC, "model": "other"})
    assert during.status_code == 503 and during.headers["retry-after"] == "5" and during.json()["field"] == "model"
    assert during.json()["detail"].startswith("model 'other' is loading (reading weights, ")
    busy = client.post("/api/models/other/unload")
    assert busy.status_code == 409 and busy.json()["detail"] == "model 'other' is loading; unload it once it has loaded"
    assert client.post("/api/models/other/load").json()["state"] == "loading"  # asked again: the same load

    gate.set()
    client.app.state.service.manager.wait("other", timeout=30)
    assert states(client)["other"]["state"] == "loaded"
    assert client.post("/api/models/other/load").status_code == 200  # loaded already
    assert client.post("/api/runs", json={**SPEC, "model": "other"}).status_code == 200
    unloaded = client.post("/api/models/other/unload")
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "not loaded"
    assert client.post("/api/runs", json={**SPEC, "model": "other"}).status_code == 200  # stored: no model needed
    assert client.post("/api/runs", json={**SPEC, "model": "other", "metric": "prob"}).status_code == 409


def test_a_model_that_cannot_load_is_unavailable_with_a_plain_reason(gated):
    client, _ = gated
    client.post("/api/models/broken/load")
    state = client.app.state.service.manager.wait("broken", timeout=30)
    assert state["state"] == "unavailable"
    assert "could not be loaded" in state["reason"] and "`hf download broken`" in state["reason"]
    for text in (str(states(client)["broken"]), client.get("/").text, client.post("/api/runs", json={**SPEC, "model": "broken"}).text):
        assert "/srv/secret" not in text
    refused = client.post("/api/runs", json={**SPEC, "model": "broken"})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("model 'broken' is not available on this server: ")


def test_the_load_post_refuses_an_unknown_model_naming_the_field(gated):
    client, _ = gated
    for name in ("gpt2", "org/other-model"):
        response = client.post(f"/api/models/{name}/load")
        assert response.status_code == 422 and response.json()["field"] == "name"
        assert response.json()["detail"].startswith(f"unknown model {name!r}: this server offers default, other, broken")
    assert client.post("/api/models/gpt2/unload").json()["field"] == "name"


def test_the_picker_says_each_models_state_and_loads_one_from_the_page(gated):
    client, gate = gated
    page = client.get("/").text
    assert '<li data-model="default" data-state="loaded"><code>default</code>: loaded' in page
    assert ('<li data-model="other" data-state="not loaded"><code>other</code>: not loaded <button type="button" class="load" '
            'hx-post="/models/other/load" hx-params="none" hx-target="#model-states" hx-swap="outerHTML">Load</button>') in page
    assert 'hx-trigger="every 1s"' not in page.split('id="model-states"')[1].split(">")[0]  # nothing loads: no polling
    foreign = client.post("/models/other/load", headers={**HTMX, "Origin": "http://evil.example"})
    assert foreign.status_code == 403 and states(client)["other"]["state"] == "not loaded"  # guard.py's Origin rule

    panel = client.post("/models/other/load", headers={**HTMX, "Origin": "http://testserver"})
    assert panel.status_code == 202
    assert '<li data-model="other" data-state="loading"><code>other</code>: loading: <span class="phase">' in panel.text
    assert 'hx-get="/models/panel" hx-trigger="every 1s" hx-target="this"' in panel.text  # it polls while a model loads
    gate.set()
    client.app.state.service.manager.wait("other", timeout=30)
    after = client.get("/models/panel").text
    assert '<li data-model="other" data-state="loaded">' in after and "hx-trigger" not in after


# --- the memory budget, on the shipped models ---------------------------------------------------------------

IOI = {"clean": "When Mary and John went to the store , John gave a drink to",
       "corrupted": "When Mary and John went to the store , Mary gave a drink to", "answer": "Mary", "wrong": "John"}


def weight_bytes(name: str) -> int:
    """Parameters and buffers, counted here from a fresh copy (the budget's definition)."""
    from patchstudio.models.registry import load_model

    model = load_model(name)
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())


@pytest.fixture(scope="module")
def sizes():
    return {name: weight_bytes(name) for name in ("default", "hydra", "tracr-reverse", "tracr-sort")}


def loaded(client) -> set[str]:
    return {n for n, m in states(client).items() if m["state"] == "loaded"}


def test_past_the_budget_the_least_recently_used_model_is_unloaded(tmp_path, sizes):
    # 6.9 MB holds default, hydra and one Tracr model (3.39 + 3.39 + 0.08 or 0.10 MB), not both Tracr models
    budget = 6.9e6
    assert sizes["default"] + sizes["hydra"] + sizes["tracr-sort"] <= budget
    assert sizes["default"] + sizes["hydra"] + sizes["tracr-sort"] + sizes["tracr-reverse"] > budget
    with app_client(tmp_path, models=["default", "hydra", "tracr-reverse", "tracr-sort"],
                    models_at_start=["default", "tracr-reverse", "tracr-sort"], model_memory_mb=6.9) as client:
        manager = client.app.state.service.manager
        assert loaded(client) == {"default", "tracr-reverse", "tracr-sort"}
        assert states(client)["default"]["memory_mb"] == round(sizes["default"] / 1e6, 3)
        assert client.post("/api/runs", json={"prompts": [IOI], "component": "head", "model": "default"}).status_code == 200
        # used last: default (a run), then tracr-sort, tracr-reverse (loaded in that order before)
        client.post("/api/models/hydra/load")
        assert manager.wait("hydra", timeout=60)["state"] == "loaded"
        assert loaded(client) == {"default", "hydra", "tracr-sort"}  # tracr-reverse, the least recently used, went
        assert manager.used_bytes() == sizes["default"] + sizes["hydra"] + sizes["tracr-sort"] <= budget
        client.get("/")  # the page shows default: a use; hydra was used (loaded) after tracr-sort
        client.post("/api/models/tracr-reverse/load")  # its size is known now: room is made before it loads
        assert manager.wait("tracr-reverse", timeout=60)["state"] == "loaded"
        assert loaded(client) == {"default", "hydra", "tracr-reverse"}
        assert manager.used_bytes() <= budget
        budget_line = client.get("/models/panel").text
        assert f"Loaded models use {manager.used_bytes() / 1e6:.1f} of 6.9 MB" in budget_line


def test_a_job_keeps_its_model_until_it_finishes_and_the_load_waits(tmp_path, sizes, monkeypatch):
    """Budget for one of default and hydra: loading hydra while a job runs on default waits for the
    job to finish, then unloads default."""
    import patchstudio.service as service_module

    started, release = threading.Event(), threading.Event()
    real_run = service_module.run

    def held_run(model, spec, **kw):  # the job on default holds until the test lets it go
        if spec.model == "default":
            started.set()
            assert release.wait(60)
        return real_run(model, spec, **kw)

    monkeypatch.setattr(service_module, "run", held_run)
    assert sizes["default"] <= 5e6 and sizes["default"] + sizes["hydra"] > 5e6
    with app_client(tmp_path, models=["default", "hydra"], models_at_start=["default"], model_memory_mb=5,
                    background_patched_runs=0) as client:
        manager = client.app.state.service.manager
        job = client.post("/api/runs", json={"prompts": [IOI], "component": "head", "model": "default"})
        assert job.status_code == 202
        job_id = job.json()["id"]
        assert started.wait(60)
        timer = threading.Timer(50, release.set)  # never hold the job past the test's own timeouts
        timer.start()
        assert client.post("/api/models/hydra/load").status_code == 202
        waiting = wait_for(lambda: (s := states(client)["hydra"])["phase"].startswith("waiting for the run or job on default")
                           and s, what="the load to wait for the job")
        assert waiting["state"] == "loading"
        default = states(client)["default"]
        assert (default["state"], default["busy"]) == ("loaded", 1)  # the job computes on it
        unload = client.post("/api/models/default/unload")
        assert unload.status_code == 409 and "model 'default' is computing a run or job now" in unload.json()["detail"]

        release.set()
        timer.cancel()
        assert manager.wait("hydra", timeout=60)["state"] == "loaded"
        done = wait_for(lambda: client.get(f"/jobs/{job_id}.json").json()["status"] in ("done", "error")
                        and client.get(f"/jobs/{job_id}.json").json(), what="the job")
        assert done["status"] == "done" and client.get(f"/runs/{job_id}.json").status_code == 200
        assert loaded(client) == {"hydra"} and manager.used_bytes() == sizes["hydra"] <= 5e6


def test_a_jobs_worker_loads_its_model_on_demand(tmp_path, tiny_model):
    """A job queued while its model was loaded runs after the model was unloaded: the worker loads it."""
    with app_client(tmp_path, lambda name: tiny_model, models=["default", "other"], background_patched_runs=0,
                    local_workers=0) as client:
        service = client.app.state.service
        job = client.post("/api/runs", json={**SPEC, "model": "other"}).json()
        assert job["status"] == "queued"
        assert client.post("/api/models/other/unload").json()["state"] == "not loaded"
        worker = open_queue(service.settings.model_copy(update={"local_workers": 1}), service.store, service.get_or_run,
                            ["default", "other"])
        worker.start()
        try:
            done = wait_for(lambda: (j := client.get(f"/jobs/{job['id']}.json").json())["status"] in ("done", "error") and j,
                            what="the job")
        finally:
            worker.shutdown()
        assert done["status"] == "done", done
        assert states(client)["other"]["state"] == "loaded"
        stored = client.get(f"/runs/{job['id']}.json").json()
        assert stored["model"]["name"] == "other"


def test_start_models_must_be_allow_listed_and_a_server_that_loads_none_is_ready(tmp_path, tiny_model):
    with pytest.raises(ValueError, match="PATCHSTUDIO_MODELS_AT_START names models outside PATCHSTUDIO_MODELS: gpt2"):
        Settings(models=["default"], models_at_start=["gpt2"])
    with app_client(tmp_path, lambda name: tiny_model, models=["default"], models_at_start=[]) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["models"] == {"default": "not loaded"}
        assert client.get("/").status_code == 200 and states(client)["default"]["state"] == "not loaded"


def test_loads_unloads_and_requests_at_once_end_in_named_refusals_never_a_crash(tiny_model):
    """Eight threads load, unload and ask for two models for a second and a half, under a budget that
    holds one: every answer is the model or a refusal naming it, and the budget holds at the end."""
    from patchstudio.model_manager import ModelManager, ModelNotReady, model_bytes

    size = model_bytes(tiny_model)
    manager = ModelManager(Settings(models=["a", "b"], model_memory_mb=1.5 * size / 1e6), lambda name: tiny_model)
    outcomes: list[str] = []
    failures: list[BaseException] = []
    stop = time.monotonic() + 1.5

    def hammer(i: int) -> None:
        name = "ab"[i % 2]
        try:
            while time.monotonic() < stop:
                for act in (manager.load, manager.get, manager.unload):
                    try:
                        act(name)
                        outcomes.append("ok")
                    except ModelNotReady as exc:
                        assert f"model {name!r} is" in str(exc) and exc.status in (409, 503)
                        outcomes.append(str(exc.status))
                with manager.using(name, load=True) as entry:  # a job's worker: loads and holds it
                    assert entry.state == "loaded" and entry.model is tiny_model
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert {"ok", "409"} <= set(outcomes)
    for name in "ab":
        manager.wait(name, timeout=30)
    assert manager.used_bytes() <= 1.5 * size
    assert sum(e.busy for e in manager.entries.values()) == 0
