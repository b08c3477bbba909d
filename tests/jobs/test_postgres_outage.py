"""PostgreSQL stopped for three stale periods under a server and two workers (issue 21, findings 1,
2 and 5), on a private cluster this test starts, stops and restarts (never the shared one).

While the database is down the server answers 503 with Retry-After and a plain sentence (readiness
too), and stays up. Workers that lose the database finish what they run and exit with status 1;
a supervisor (this test) restarts them, as Docker's restart policy does. Afterwards every job ends
done (none stays running, none counts against its client), every worker heart-beats, and a job
submitted then runs once: no half-dead worker has its work rerun elsewhere."""

from __future__ import annotations

import os
import threading
import time

import httpx
from sqlalchemy import create_engine, text

from helpers import TINY_PAIRS
from procs import Server, private_postgres, process_env, wait_for, worker

# Runs in CI again (it was opt-in, failing 4 of 5 runs, before the fixes of 2026-12-03: a worker that
# stopped but never exited, see jobs/pg.py); skips with a reason where no private cluster can be made.

PAIR = TINY_PAIRS[0]
# PATCHSTUDIO_TEST_STALE_SECONDS / PATCHSTUDIO_TEST_OUTAGE_SECONDS: an operator's run by hand (30 and 20)
STALE = float(os.environ.get("PATCHSTUDIO_TEST_STALE_SECONDS", "4"))
OUTAGE = float(os.environ.get("PATCHSTUDIO_TEST_OUTAGE_SECONDS", str(3 * STALE)))
LONG = [{"method": "ablation", "ablation": "zero", "prompts": [PAIR] * n, "component": "head", "positions": "each"}
        for n in (4, 5, 6)]
SHORT = [{"prompts": [PAIR], "component": c, "positions": "each"} for c in ("resid_pre", "attn_out", "mlp_out")]
AFTER = {"method": "ablation", "ablation": "zero", "prompts": [PAIR] * 3, "component": "head", "positions": "each"}


class Supervisor:
    """Restarts a worker that exits, after a pause (what `restart: unless-stopped` does), and keeps
    each exit status."""

    def __init__(self, make):
        self.make, self.exits, self.procs = make, [], [make(0).start(), make(1).start()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        starts = 2
        while not self._stop.wait(0.5):
            for i, proc in enumerate(self.procs):
                code = proc.popen.poll()
                if code is not None:
                    self.exits.append(code)
                    time.sleep(1)
                    self.procs[i] = self.make(starts).start()
                    starts += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.procs:
            proc.stop()


def _job(server: Server, job_id: str) -> dict:
    response = httpx.get(f"{server.url}/jobs/{job_id}.json", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_postgres_outage_leaves_no_job_stuck_and_every_worker_healthy(tmp_path):
    with private_postgres() as pg:
        env = process_env(database_url=pg.url, chunk_rows=1, job_heartbeat_seconds=1, job_stale_seconds=STALE,
                          max_jobs_per_client=100)
        server = Server(env, tmp_path / "web.log").start()
        workers = None
        t0 = time.monotonic()
        try:
            server.wait_ready()
            print(f"{time.monotonic() - t0:.0f} s: the server is ready")
            workers = Supervisor(lambda i: worker(env, tmp_path / f"worker{i}.log"))
            ids = []
            for spec in [*LONG, *SHORT]:
                response = httpx.post(f"{server.url}/api/jobs", json=spec, timeout=30)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            wait_for(lambda: any((j := _job(server, i))["status"] == "running" and j["done"] > 0 for i in ids[:3]), 180,
                     "a long job to make progress")
            engine = create_engine(pg.url)

            def registered(fresh: float | None = None) -> int:
                """Workers registered with the queue (with a heartbeat younger than ``fresh`` seconds)."""
                with engine.connect() as conn:
                    return conn.execute(text("SELECT count(*) FROM procrastinate_workers"
                                             + (f" WHERE last_heartbeat > NOW() - INTERVAL '{fresh} seconds'" if fresh else ""))).scalar_one()

            # both workers up before the outage (on a busy machine one may still be importing torch, and
            # one that starts during the outage exits 1 at once: a different episode from the one tested)
            wait_for(lambda: registered() == 2, 240, "both workers to start")
            engine.dispose()

            print(f"{time.monotonic() - t0:.0f} s: stopping PostgreSQL")
            pg.stop("fast")
            down = time.monotonic()
            page = httpx.get(f"{server.url}/jobs.json", timeout=30)
            assert page.status_code == 503, page.text
            assert page.headers["retry-after"] and "database is unavailable" in page.json()["detail"]
            ready = httpx.get(f"{server.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
            assert httpx.post(f"{server.url}/api/jobs", json=AFTER, timeout=30).status_code == 503
            assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200  # the process is alive
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
            pg.start()

            print(f"{time.monotonic() - t0:.0f} s: PostgreSQL is back")
            wait_for(lambda: httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200, 60, "readiness to come back")
            for job_id in ids:
                wait_for(lambda: _job(server, job_id)["status"] not in ("queued", "running"), 300, f"job {job_id} to end",
                         interval=0.5)
            print(f"{time.monotonic() - t0:.0f} s: every job ended")
            assert [_job(server, i)["status"] for i in ids] == ["done"] * len(ids)
            assert all(code == 1 for code in workers.exits), workers.exits  # lost the database: exit 1, restarted
            if OUTAGE > STALE:
                assert workers.exits  # they did lose it

            # after the outage: every worker heart-beats, and a new job runs once (no rerun by another worker)
            after = httpx.post(f"{server.url}/api/jobs", json=AFTER, timeout=30).json()["id"]
            wait_for(lambda: _job(server, after)["status"] == "done", 180, "a job submitted after the outage")
            print(f"{time.monotonic() - t0:.0f} s: the job submitted after is done; worker exits {workers.exits}")
            assert _job(server, after)["attempts"] == 1
            # a worker restarted a moment ago registers on its first heartbeat: wait for both, then check
            # that they stay fresh (a half-dead worker's heartbeat would stay frozen)
            wait_for(lambda: registered(2 * STALE) == 2, 60, "both workers to heart-beat")
            time.sleep(2 * STALE)
            with engine.connect() as conn:
                active = conn.execute(text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")).scalar_one()
            assert registered(2 * STALE) == len([p for p in workers.procs if p.popen.poll() is None]) == 2
            engine.dispose()
            assert active == 0
        except Exception:
            for proc in [server, *(workers.procs if workers else [])]:
                print(f"--- {proc.log.name}\n{proc.tail(400)}")
            raise
        finally:
            if workers is not None:
                workers.stop()
            server.stop()
