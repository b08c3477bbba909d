"""One attempt at one job: run its spec, report progress through the jobs row, stop when asked.

Every write is fenced by the attempt number ``JobStore.claim`` returned: a worker that was
declared dead (and whose job was then rerun elsewhere) finds its writes refused and stops.
Errors shown to users are plain messages; tracebacks go to the log only.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import os
from typing import Any, Callable

from patchstudio.errors import InputError
from patchstudio.specs import parse_spec
from patchstudio.jobs.store import JobStore

log = logging.getLogger("patchstudio.jobs")

RunSpec = Callable[[Any, Callable[[int, int], None]], Any]  # (spec, progress) -> stored run

REPORT_SECONDS = 0.5  # progress (and the cancel flag) go through the database at most this often


class Cancelled(Exception):
    """The user asked to cancel this job."""


class Lost(Exception):
    """This attempt no longer owns the job (it was requeued and claimed again)."""


class Released(Exception):
    """This worker is shutting down: the job goes back to the queue."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def execute(store: JobStore, run_spec: RunSpec, job_id: str, attempt: int, *, should_stop: Callable[[], bool] = lambda: False,
            report_seconds: float = REPORT_SECONDS) -> str:
    """Run one claimed attempt to its end; returns the outcome (done, error, cancelled, released, lost)."""
    job = store.get(job_id)
    if job is None:
        return "lost"
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if should_stop():
            raise Released
        now = time.monotonic()
        if now - last[0] < report_seconds and done < total:
            return
        last[0] = now
        state = store.progress(job_id, attempt, done, total)
        if state == "cancel":
            raise Cancelled
        if state == "lost":
            raise Lost

    try:
        spec = parse_spec(json.loads(job.spec_json))
        run_spec(spec, progress)
    except Cancelled:
        store.finish(job_id, attempt, "cancelled")
        log.info("job %s cancelled", job_id)
        return "cancelled"
    except Released:
        store.release(job_id, attempt)
        log.info("job %s released back to the queue (worker stopping)", job_id)
        return "released"
    except Lost:
        log.warning("job %s attempt %d lost its claim (another worker reran it); stopping", job_id, attempt)
        return "lost"
    except InputError as exc:  # a user-facing message by design
        store.finish(job_id, attempt, "error", str(exc))
        return "error"
    except Exception:
        log.exception("job %s attempt %d failed", job_id, attempt)
        store.finish(job_id, attempt, "error",
                         f"the server failed while computing this experiment (job {job_id}); the details are in the server's log")
        return "error"
    finished = store.finish(job_id, attempt, "done")
    log.info("job %s done (attempt %d)%s", job_id, attempt, "" if finished else " but it had been reclaimed")
    return "done" if finished else "lost"
