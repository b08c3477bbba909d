"""PostgreSQL: Procrastinate dispatch to two worker processes and one web server, on the tiny model.

Twenty jobs; one worker is killed with SIGKILL mid-job; every job completes exactly once (one queue
entry each, succeeded; one stored run each, equal to a serial run); a cancelled job stops within
seconds; a job submitted right before the web server is killed is still there, with its page,
after the restart. Skipped where PATCHSTUDIO_TEST_POSTGRES_URL is unset (CI sets it)."""

from __future__ import annotations

import itertools
import signal
import time

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from procs import POSTGRES_URL, Server, postgres_schema, process_env, stopped_after, wait_for, worker

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")

PAIR = TINY_PAIRS[0]
# Zero ablation, so the engine skips no patch (activation patching skips every position before the
# prompts' first difference, and ran these in well under a second): ~6 s and ~12 s on one thread
# with one row per pass, long enough to be caught running, killed and cancelled.
LONG = {"method": "ablation", "ablation": "zero", "prompts": [PAIR] * 24, "component": "head", "positions": "each"}
CANCEL_ME = {"method": "ablation", "ablation": "zero", "prompts": [PAIR] * 48, "component": "head", "positions": "each"}
SHORT = [
    {"prompts": [PAIR], "component": component, "positions": "each", "metric": metric}
    for component, metric in itertools.islice(
        itertools.product(("resid_pre", "attn_out", "mlp_out", "head_v"), ("logit_diff", "prob", "loss", "kl", "normalized_logit_diff")), 19)
]


def _job(server: Server, job_id: str) -> dict:
    response = httpx.get(f"{server.url}/jobs/{job_id}.json", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_two_workers_a_sigkill_a_cancel_and_a_web_restart(tmp_path, tiny_model):
    with postgres_schema() as url:
        # a stale time well above the heartbeat: with 3 s a busy 2-core machine delayed a live worker's
        # beats past it, so its job was rerun elsewhere and ran twice (CI, 2026-12-03)
        env = process_env(database_url=url, chunk_rows=1, job_heartbeat_seconds=1, job_stale_seconds=10, max_jobs_per_client=100)
        server = Server(env, tmp_path / "web.log").start()
        workers = [worker(env, tmp_path / f"worker{i}.log").start() for i in range(2)]
        with stopped_after([server, *workers]) as procs:
            server.wait_ready()
            jobs = []
            for spec in [LONG, *SHORT]:
                response = httpx.post(f"{server.url}/api/jobs", json=spec, timeout=30)
                assert response.status_code == 202, response.text
                jobs.append(response.json()["id"])
            assert len(set(jobs)) == 20
            again = httpx.post(f"{server.url}/api/jobs", json=LONG, timeout=30).json()  # the same experiment joins its job
            assert again["id"] == jobs[0]

            # SIGKILL the worker that runs the long job, mid-job
            engine = create_engine(url)
            def long_running():
                with engine.connect() as conn:
                    row = conn.execute(text("SELECT worker, done FROM jobs WHERE id = :id AND status = 'running'"), {"id": jobs[0]}).first()
                return row if row is not None and row.done > 0 else None
            row = wait_for(long_running, 120, "the long job to make progress")
            pid = int(row.worker.split(":")[1])
            victim = next(w for w in workers if w.pid == pid)
            victim.kill(signal.SIGKILL)

            # cancel a job while it runs on the surviving worker
            cancel_id = httpx.post(f"{server.url}/api/jobs", json=CANCEL_ME, timeout=30).json()["id"]
            wait_for(lambda: (j := _job(server, cancel_id))["status"] == "running" and j["done"] > 0, 180, "the job to cancel to run")
            asked = time.monotonic()
            assert httpx.post(f"{server.url}/api/jobs/{cancel_id}/cancel", timeout=10).status_code == 200
            wait_for(lambda: _job(server, cancel_id)["status"] == "cancelled", 10, "the cancelled job to stop", interval=0.05)
            assert time.monotonic() - asked < 5
            assert httpx.get(f"{server.url}/runs/{cancel_id}.json", timeout=10).status_code == 404

            # a job submitted just before the web server dies survives its restart, with its page
            late = {"prompts": [PAIR] * 2, "component": "head", "positions": "each", "metric": "prob"}
            late_id = httpx.post(f"{server.url}/api/jobs", json=late, timeout=30).json()["id"]
            server.kill(signal.SIGKILL)
            server = procs[0] = Server(env, tmp_path / "web2.log", port=server.port).start().wait_ready()
            page = httpx.get(f"{server.url}/jobs/{late_id}", timeout=10, follow_redirects=True)
            assert page.status_code == 200 and late_id in page.text

            for job_id in [*jobs, late_id]:
                wait_for(lambda: _job(server, job_id)["status"] == "done", 240, f"job {job_id} to finish", interval=0.3)
            assert _job(server, jobs[0])["attempts"] == 2  # rerun once, on the other worker

            with engine.connect() as conn:
                queue = conn.execute(text("SELECT args->>'job_id' AS id, status, attempts FROM procrastinate_jobs")).all()
                runs = conn.execute(text("SELECT id FROM runs")).scalars().all()
            engine.dispose()
            entries = {}
            for entry in queue:
                entries.setdefault(entry.id, []).append(entry.status)
            for job_id in [*jobs, late_id]:  # exactly once: one queue entry, succeeded; one stored run
                assert entries[job_id] == ["succeeded"], (job_id, entries[job_id])
            assert sorted(runs) == sorted([*jobs, late_id])
            for job_id, spec in zip(jobs, [LONG, *SHORT]):  # equal to serial runs (to float noise: workers batch one row per pass)
                stored = httpx.get(f"{server.url}/runs/{job_id}.json", timeout=10).json()
                expected = run(tiny_model, spec)
                assert stored["id"] == expected.id
                assert torch.allclose(torch.tensor(stored["values"]), torch.tensor(expected.values), atol=1e-4), job_id
