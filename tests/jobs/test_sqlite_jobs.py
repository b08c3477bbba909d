"""SQLite, the single-machine default: jobs live in the database, so a server killed mid-job
(kill -9) is restarted and the job reruns and completes; its page never answers 404. A
``patchstudio worker`` on the same file takes the jobs of a server that runs none itself, and on
SIGTERM puts its running job back in the queue and exits."""

from __future__ import annotations

import signal

import httpx
import torch

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from procs import Server, process_env, wait_for, worker

LONG = {"prompts": [TINY_PAIRS[0]] * 6, "component": "head", "positions": "each"}  # 720 patched runs, ~5 s


def _status(server: Server, job_id: str) -> dict:
    """The job's JSON; its page must answer too (200, never 404) whenever the server is up."""
    page = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10, follow_redirects=False)
    assert page.status_code in (200, 303), page.status_code
    response = httpx.get(f"{server.url}/jobs/{job_id}.json", timeout=10)
    assert response.status_code == 200
    return response.json()


def test_kill_9_during_a_job_then_restart_and_the_job_completes(tmp_path, tiny_model):
    env = process_env(database_url=f"sqlite:///{tmp_path}/lab.sqlite3", background_patched_runs=0, chunk_rows=1,
                      job_heartbeat_seconds=0.5, job_stale_seconds=2)
    server = Server(env, tmp_path / "server.log").start().wait_ready()
    try:
        submitted = httpx.post(f"{server.url}/api/runs", json=LONG, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert submitted.headers["location"] == f"/jobs/{job_id}.json"
        wait_for(lambda: (s := _status(server, job_id))["status"] == "running" and s["done"] > 0, 60, "the job to make progress")

        server.kill(signal.SIGKILL)  # mid-job
        restarted = Server(env, tmp_path / "server2.log", port=server.port).start().wait_ready()
        server = restarted
        first = _status(server, job_id)
        assert first["status"] in ("running", "queued", "done")
        page = httpx.get(f"{server.url}/runs/{job_id}", timeout=10)  # the run's link shows the job meanwhile
        assert page.status_code == 200
        done = wait_for(lambda: (s := _status(server, job_id))["status"] not in ("queued", "running") and s, 90,
                        "the job to complete after the restart", interval=0.3)
        assert done["status"] == "done" and done["attempts"] == 2, done
        stored = httpx.get(f"{server.url}/runs/{job_id}.json", timeout=10).json()
        expected = run(tiny_model, LONG)
        assert stored["id"] == expected.id
        assert torch.allclose(torch.tensor(stored["values"]), torch.tensor(expected.values), atol=1e-4)
    except Exception:
        print(server.tail(80))
        raise
    finally:
        server.stop()


def test_a_worker_process_on_sqlite_stops_on_sigterm_and_its_job_goes_back_to_the_queue(tmp_path, tiny_model):
    env = process_env(database_url=f"sqlite:///{tmp_path}/lab.sqlite3", local_workers=0, chunk_rows=1,
                      job_heartbeat_seconds=0.5, job_stale_seconds=30)
    server = Server(env, tmp_path / "server.log").start().wait_ready()
    procs = [server]
    try:
        submitted = httpx.post(f"{server.url}/api/jobs", json=LONG, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert _status(server, job_id)["status"] == "queued"  # the server runs no jobs itself

        first = worker(env, tmp_path / "worker1.log").start()
        procs.append(first)
        wait_for(lambda: (s := _status(server, job_id))["status"] == "running" and s["done"] > 0, 60, "the worker to take the job")
        first.stop()  # SIGTERM
        assert first.popen.returncode == 0, first.tail()
        released = _status(server, job_id)
        assert released["status"] == "queued" and released["attempts"] == 1, released  # back at once, not after 30 s

        second = worker(env, tmp_path / "worker2.log").start()
        procs.append(second)
        done = wait_for(lambda: (s := _status(server, job_id))["status"] not in ("queued", "running") and s, 90,
                        "the second worker to finish the job", interval=0.3)
        assert done["status"] == "done" and done["attempts"] == 2, done
    except Exception:
        for proc in procs:
            print(proc.tail(40))
        raise
    finally:
        for proc in procs:
            proc.stop()
