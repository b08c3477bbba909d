"""One attempt at one job: run its spec, report progress through the jobs row, stop when asked.

Every write is fenced by the attempt number ``JobStore.claim`` returned: a worker that was
declared dead (and whose job was then rerun elsewhere) finds its writes refused and stops.
Errors shown to users are plain messages; tracebacks go to the log only.

The database may go away under a running job (PostgreSQL restarted, SQLite's disk full): a
progress report that cannot be written is skipped (the sweep goes on), the job's last write (done,
error, back to the queue) is retried until ``write_seconds`` pass, and a job that could not store
its result goes back to the queue to run again. Whatever still fails leaves the row running with a
heartbeat that stops, which ``JobStore.requeue_stale`` settles: no job stays running forever.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from patchstudio.errors import InputError
from patchstudio.jobs.store import JobStore
from patchstudio.specs import parse_spec
from patchstudio.store import unavailable

log = logging.getLogger("patchstudio.jobs")

# (spec, progress) -> stored run; called as (spec, progress, computation) when the job names the
# computation ("<dtype>:<weights hash>") its server asked for, which the callee refuses if it differs
RunSpec = Callable[..., Any]

REPORT_SECONDS = 0.5  # progress (and the cancel flag) go through the database at most this often
WRITE_SECONDS = 60.0  # how long a job's last write is retried while the database is unavailable


class Cancelled(Exception):
    """The user asked to cancel this job."""


class Lost(Exception):
    """This attempt no longer owns the job (it was requeued and claimed again)."""


class Released(Exception):
    """This worker is shutting down: the job goes back to the queue."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def retry_write(write: Callable[[], Any], what: str, seconds: float = WRITE_SECONDS) -> Any:
    """``write()``, retried with backoff while the database is unavailable, for up to ``seconds``;
    re-raises the last error after that (or at once for any other error)."""
    deadline = time.monotonic() + seconds
    pause = 0.2
    while True:
        try:
            return write()
        except Exception as exc:
            if not unavailable(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: the database is unavailable; retrying in %.1f s", what, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def execute(store: JobStore, run_spec: RunSpec, job_id: str, attempt: int, *, should_stop: Callable[[], bool] = lambda: False,
            report_seconds: float = REPORT_SECONDS, write_seconds: float = WRITE_SECONDS) -> str:
    """Run one claimed attempt to its end; returns the outcome (done, error, cancelled, released,
    lost, or unwritten: the last write failed past ``write_seconds``, and the stale sweep settles it)."""
    job = retry_write(lambda: store.get(job_id), f"job {job_id}", write_seconds)
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
        try:
            state = store.progress(job_id, attempt, done, total)
        except Exception as exc:
            if not unavailable(exc):
                raise
            log.warning("job %s: progress not recorded (the database is unavailable); the sweep goes on", job_id)
            return
        if state == "cancel":
            raise Cancelled
        if state == "lost":
            raise Lost

    def end(status: str, error: str | None = None) -> bool | None:
        try:
            return retry_write(lambda: store.finish(job_id, attempt, status, error), f"job {job_id} ({status})", write_seconds)
        except Exception:
            log.exception("job %s attempt %d: could not record %s; the stale-job sweep will settle it", job_id, attempt, status)
            return None

    def back_to_queue(why: str) -> str:
        try:
            retry_write(lambda: store.release(job_id, attempt), f"job {job_id} (release)", write_seconds)
        except Exception:
            log.exception("job %s attempt %d: could not put it back in the queue; the stale-job sweep will", job_id, attempt)
            return "unwritten"
        log.info("job %s released back to the queue (%s)", job_id, why)
        return "released"

    try:
        spec = parse_spec(json.loads(job.spec_json))
        if job.computation is None:
            run_spec(spec, progress)
        else:
            run_spec(spec, progress, job.computation)
    except Cancelled:
        end("cancelled")
        log.info("job %s cancelled", job_id)
        return "cancelled"
    except Released:
        return back_to_queue("worker stopping")
    except Lost:
        log.warning("job %s attempt %d lost its claim (another worker reran it); stopping", job_id, attempt)
        return "lost"
    except InputError as exc:  # a user-facing message by design
        return "error" if end("error", str(exc)) is not None else "unwritten"
    except Exception as exc:
        if unavailable(exc) and attempt < store.max_attempts:
            log.warning("job %s attempt %d: the database failed under it; it goes back to the queue", job_id, attempt)
            return back_to_queue("the database was unavailable")
        log.exception("job %s attempt %d failed", job_id, attempt)
        message = (f"the server failed while computing this experiment (job {job_id}); the details are in the server's log"
                   if not unavailable(exc) else
                   f"the database was unavailable each time this experiment finished computing (job {job_id}, "
                   f"{attempt} attempts); submit it again once the server's database takes writes")
        return "error" if end("error", message) is not None else "unwritten"
    finished = end("done")
    if finished is None:
        return "unwritten"
    log.info("job %s done (attempt %d)%s", job_id, attempt, "" if finished else " but it had been reclaimed")
    return "done" if finished else "lost"
