"""Fairness (issue 21, finding 7): a flood of 30 jobs from one client, then one small job from
another. The bound: the small job starts as soon as the jobs running when it was queued end (at most
one more flood job per worker starts first), whatever the flood's size; first-in first-out made it wait for all 30 (54.9 s in the
probe). Checked on SQLite (worker thread in the web process) and on PostgreSQL (a worker process,
Procrastinate handing out tickets by priority), from the jobs' own start times: an order, not a
speed, so a loaded machine cannot make it flaky."""

from __future__ import annotations

import contextlib
import datetime as dt

import httpx
import pytest
from sqlalchemy import create_engine, text

from helpers import TINY_PAIRS
from procs import POSTGRES_URL, Server, postgres_schema, process_env, stopped_after, wait_for, worker
from web_helpers import make_client

FLOOD = [{"prompts": [TINY_PAIRS[0]] * k, "component": "resid_pre", "positions": "each"} for k in range(1, 31)]
SMALL = {"prompts": [TINY_PAIRS[1]], "component": "head", "positions": "each"}


def started(rows) -> dict[str, dt.datetime]:
    return {r.id: r.started_at.replace(tzinfo=r.started_at.tzinfo or dt.timezone.utc) for r in rows if r.started_at}


def check_bound(flood_ids: list[str], small_id: str, rows, workers: int) -> None:
    """Between the small job's arrival and its start, at most one flood job per worker started (one
    being claimed as it arrived); first-in first-out would have started every queued flood job."""
    by_id = {r.id: r for r in rows}
    begun = started(rows)
    arrived = by_id[small_id].created_at.replace(tzinfo=by_id[small_id].created_at.tzinfo or dt.timezone.utc)
    waiting = [i for i in flood_ids if i not in begun or begun[i] > arrived]
    assert len(waiting) >= 10, len(waiting)  # the flood was still waiting when the small job came
    late = [i for i in waiting if i in begun and begun[i] < begun[small_id]]
    assert len(late) <= workers, (len(late), len(waiting))


def test_a_flood_does_not_starve_another_clients_job_on_sqlite(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, background_patched_runs=0, chunk_rows=1, max_jobs_per_client=40,
                     max_jobs_per_address=40) as c:
        flood = [c.post("/api/jobs", json=spec, cookies={"patchstudio_client": "flooder0001"}).json()["id"] for spec in FLOOD]
        small = c.post("/api/jobs", json=SMALL, cookies={"patchstudio_client": "another0001"})
        assert small.status_code == 202, small.text
        small_id = small.json()["id"]
        wait_for(lambda: c.get(f"/jobs/{small_id}.json").json()["status"] == "done", 300, "the small job")
        store = c.app.state.service.jobs.store
        rows = list(store.get_many([*flood, small_id]).values())
        check_bound(flood, small_id, rows, workers=1)
        c.app.state.service.jobs.shutdown()  # the rest of the flood is not this test's business


@pytest.mark.skipif(not POSTGRES_URL, reason="PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")
def test_a_flood_does_not_starve_another_clients_job_on_postgres(tmp_path):
    with postgres_schema() as url:
        env = process_env(database_url=url, chunk_rows=1, max_jobs_per_client=40, max_jobs_per_address=40)
        server = Server(env, tmp_path / "web.log").start()
        with stopped_after([server]) as procs:
            server.wait_ready()
            flood = [httpx.post(f"{server.url}/api/jobs", json=spec, cookies={"patchstudio_client": "flooder0001"},
                                timeout=30).json()["id"] for spec in FLOOD]
            procs.append(worker(env, tmp_path / "worker.log").start())  # the flood waits for it
            wait_for(lambda: httpx.get(f"{server.url}/jobs/{flood[0]}.json", timeout=10).json()["status"] != "queued", 120,
                     "the worker to take the flood's first job")
            small = httpx.post(f"{server.url}/api/jobs", json=SMALL, cookies={"patchstudio_client": "another0001"}, timeout=30)
            assert small.status_code == 202, small.text
            small_id = small.json()["id"]
            wait_for(lambda: httpx.get(f"{server.url}/jobs/{small_id}.json", timeout=10).json()["status"] == "done", 300,
                     "the small job", interval=0.3)
            engine = create_engine(url)
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT id, created_at, started_at FROM jobs")).all()
            engine.dispose()
            check_bound(flood, small_id, rows, workers=1)
