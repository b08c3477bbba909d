"""The shared server under an operator's probes (issue 21): malformed headers and ids are 4xx on
both stores, only a job's submitter may cancel it, a cookie per request does not multiply the job
cap, the queue has a global bound, proxy headers are trusted only from configured proxies, and a
stored run from other weights or another dtype is never passed off as this server's."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from patchstudio.engine.run import run
from patchstudio.web.guard import host_name
from procs import POSTGRES_URL, Server, postgres_schema, process_env, wait_for
from web_helpers import HTMX, IOI, IOI_CORRUPTED, make_client

SPEC = {"prompts": [{"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}], "component": "head"}
COMPONENTS = ("head", "mlp_out", "attn_out", "resid_pre", "resid_post", "head_v", "head_q", "head_k", "pattern")


def job_spec(i: int) -> dict:
    """A distinct experiment per i."""
    return {**SPEC, "component": COMPONENTS[i % len(COMPONENTS)], "metric": ("logit_diff", "prob", "loss")[i // len(COMPONENTS)]}


@contextlib.contextmanager
def database(kind: str, tmp_path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/ops.sqlite3"
        return
    if not POSTGRES_URL:
        pytest.skip("PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")
    with postgres_schema() as url:
        yield url


@pytest.mark.parametrize("origin", ["http://x:abc", "http://a:99999", "http://[::1"])
def test_a_malformed_origin_is_400_not_500(client, origin):
    response = client.post("/api/runs", json=SPEC, headers={"Origin": origin})
    assert response.status_code == 400 and response.json()["field"] == "origin", response.text
    assert "not a valid origin" in response.json()["detail"]


def test_hosts_are_parsed_as_authorities(tmp_path, tiny_model):
    assert [host_name(h) for h in ("[::1]:8000", "Example.ORG:80", "localhost", "a@b", "x:99999", "[::1", "a/b")] == [
        "::1", "example.org", "localhost", None, None, None, None]
    with make_client(tmp_path, tiny_model, allowed_hosts=["localhost", "127.0.0.1", "::1"]) as c:
        for host in ("[::1]:8000", "[::1]", "localhost:8000", "127.0.0.1"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "localhost@evil.example", "[::1", "localhost:99999"):
            assert c.get("/healthz", headers={"Host": host}).status_code == 400, host
        # an IPv6 Host passes the Origin check for its own origin
        assert c.post("/api/runs", json=SPEC, headers={"Host": "[::1]:8000", "Origin": "http://[::1]:8000"}).status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_nul_in_an_id_is_4xx_on_both_stores(tmp_path, tiny_model, kind):
    with database(kind, tmp_path) as url, make_client(tmp_path, tiny_model, database_url=url) as c:
        run_id = c.post("/api/runs", json=SPEC).json()["id"]
        for path in ("/compare?a=%00", f"/compare?a={run_id}&b=%00", "/runs/%00/attention", "/runs/a%00b/attention.json",
                     "/runs/%00", "/runs/%00.json", "/jobs/%00", "/jobs/%00.json", "/runs/%00/figure1?layer=0&head=0"):
            response = c.get(path)
            assert 400 <= response.status_code < 500, (path, response.status_code)
        assert c.post("/api/jobs/%00/cancel").status_code == 404


def test_only_the_submitter_may_cancel_a_job(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, local_workers=0) as owner, make_client(tmp_path, tiny_model, local_workers=0) as other:
        owner.get("/")  # each browser's first page sets its session cookie
        other.get("/")
        ids = [owner.post("/api/jobs", json=job_spec(i)).json()["id"] for i in range(2)]
        refused = other.post(f"/api/jobs/{ids[0]}/cancel")
        assert refused.status_code == 403 and "only the client that started a job may cancel it" in refused.json()["detail"]
        assert other.post(f"/jobs/{ids[1]}/cancel", headers=HTMX).status_code == 403
        assert [owner.get(f"/jobs/{i}.json").json()["status"] for i in ids] == ["queued", "queued"]
        assert owner.post(f"/api/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
        assert owner.post(f"/jobs/{ids[1]}/cancel", headers=HTMX).status_code == 200
        assert owner.get(f"/jobs/{ids[1]}.json").json()["status"] == "cancelled"


def test_a_cookie_per_request_does_not_multiply_the_job_cap(tmp_path, tiny_model):
    """Finding 7: 30/30 jobs were accepted with a fresh made-up cookie each; the address has a cap."""
    with make_client(tmp_path, tiny_model, local_workers=0, max_jobs_per_client=2, max_jobs_per_address=5) as c:
        codes = []
        for i in range(12):
            c.cookies.clear()
            codes.append(c.post("/api/jobs", json=job_spec(i), cookies={"patchstudio_client": f"madeup{i:04d}"}).status_code)
        assert codes == [202] * 5 + [429] * 7
        refused = c.post("/api/jobs", json=job_spec(13), cookies={"patchstudio_client": "madeup9999"})
        assert "from your address" in refused.json()["detail"] and refused.headers["retry-after"]


def test_the_queue_has_a_global_bound(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, local_workers=0, max_queued_jobs=3) as c:
        for i in range(3):
            c.cookies.clear()
            assert c.post("/api/jobs", json=job_spec(i), cookies={"patchstudio_client": f"person{i:04d}"}).status_code == 202
        full = c.post("/api/jobs", json=job_spec(3), cookies={"patchstudio_client": "person9999"})
        assert full.status_code == 503 and full.headers["retry-after"]
        assert "the job queue is full: 3 background jobs are waiting" in full.json()["detail"]


def test_proxy_headers_are_ignored_unless_the_proxy_is_configured(tmp_path):
    """uvicorn trusts 127.0.0.1's X-Forwarded-For by default: a local client could be anyone."""
    env = process_env(database_url=f"sqlite:///{tmp_path}/xff.sqlite3", local_workers=0, client_key="address",
                      max_jobs_per_client=1)
    server = Server(env, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        first = httpx.post(f"{server.url}/api/jobs", json=job_spec(0), headers={"X-Forwarded-For": "203.0.113.1"}, timeout=30)
        second = httpx.post(f"{server.url}/api/jobs", json=job_spec(1), headers={"X-Forwarded-For": "203.0.113.2"}, timeout=30)
        assert (first.status_code, second.status_code) == (202, 429), server.tail()
    finally:
        server.stop()


def test_serve_passes_the_configured_proxies_to_uvicorn(monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    from patchstudio.cli import app

    seen = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: seen.append(kwargs))
    monkeypatch.setattr("patchstudio.web.app.create_app", lambda *args, **kwargs: object())
    for env, expected in (({}, (False, None)), ({"PATCHSTUDIO_FORWARDED_ALLOW_IPS": '["10.0.0.2"]'}, (True, ["10.0.0.2"]))):
        assert CliRunner().invoke(app, ["serve"], env=env).exit_code == 0
        assert (seen[-1]["proxy_headers"], seen[-1]["forwarded_allow_ips"]) == expected


def test_a_run_from_other_weights_or_another_dtype_is_refused_and_marked(tmp_path, tiny_model):
    """Finding 8: the first server to write an id decided what its link showed, whatever its weights
    or dtype. Now a server never answers with another computation's record, nor stores its own
    under the same id; the page says whose numbers they are."""
    with make_client(tmp_path, tiny_model) as c:
        store = c.app.state.service.store
        other_weights = run(tiny_model, SPEC)
        store.put(other_weights, "0" * 64)
        half = run(tiny_model, {**SPEC, "component": "mlp_out"})
        half = half.model_copy(update={"model": half.model.model_copy(update={"dtype": "bfloat16"})})
        store.put(half, c.app.state.service.models["default"].fingerprint)

        for result, words in ((other_weights, "other weights (sha256 000000000000"), (half, "bfloat16 (this server computes in float32)")):
            refused = c.post("/api/runs", json=result.spec.model_dump(mode="json"))
            assert refused.status_code == 409 and words in refused.json()["detail"], refused.text
            assert refused.json()["field"] == "model"
            page = c.get(f"/runs/{result.id}")
            assert page.status_code == 200 and "another copy of model" in page.text and words in page.text
            assert c.get(f"/runs/{result.id}.json").json()["values"] == result.values  # the record, as it is
        assert c.post("/api/runs", json={**SPEC, "component": "attn_out"}).status_code == 200  # its own: as before


def test_a_worker_refuses_a_job_its_model_would_compute_differently(tmp_path, tiny_model):
    from patchstudio.specs import parse_spec

    with make_client(tmp_path, tiny_model, job_heartbeat_seconds=0.2) as c:
        service = c.app.state.service
        spec = parse_spec({**SPEC, "positions": "each"})
        service.jobs.submit(spec, "c:someone", 8, "bfloat16:" + service.models["default"].fingerprint)
        job = wait_for(lambda: (j := service.jobs.get(spec.id)).status == "error" and j, 60, "the worker to refuse the job")
        assert "bfloat16 (this server computes in float32)" in job.error
        assert service.store.get(spec.id) is None
