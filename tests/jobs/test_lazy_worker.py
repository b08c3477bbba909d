"""A ``patchstudio worker`` told to load no model at start (PATCHSTUDIO_MODELS_AT_START='[]') says
so, and loads its model on its first job, which then completes (SQLite; PostgreSQL runs the same
``ExperimentService.get_or_run``)."""

from __future__ import annotations

import httpx

from helpers import TINY_PAIRS
from procs import Server, process_env, stopped_after, wait_for, worker


def test_a_worker_loads_its_model_on_its_first_job(tmp_path):
    env = process_env(database_url=f"sqlite:///{tmp_path}/lab.sqlite3", local_workers=0)
    with stopped_after([]) as procs:
        server = Server(env, tmp_path / "server.log").start().wait_ready()
        procs.append(server)
        submitted = httpx.post(f"{server.url}/api/jobs", json={"prompts": TINY_PAIRS[:1], "component": "head"}, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        lazy = worker({**env, "PATCHSTUDIO_MODELS_AT_START": "[]"}, tmp_path / "worker.log").start()
        procs.append(lazy)
        said = "Patch Studio worker: default (local queue); loads default on its first job"
        wait_for(lambda: said in lazy.tail(), 240, "the worker to start")  # a process start on a busy machine is slow
        done = wait_for(lambda: (j := httpx.get(f"{server.url}/jobs/{job_id}.json", timeout=10).json())["status"]
                        not in ("queued", "running") and j, 120, "the job", interval=0.3)
        assert done["status"] == "done", done
        log = lazy.tail(80)
        assert log.index("Patch Studio worker:") < log.index("loaded model default")  # loaded after it started
