"""Background jobs for long sweeps: progress, cancellation, and a server that keeps answering.

A job runs ``service.get_or_run`` in a worker thread. The engine holds the model's lock only for
one forward pass at a time, so other requests interleave with a long sweep. A job's id is its
spec's id: submitting the same experiment twice joins the running job.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from patchstudio.engine.inputs import InputError


class Cancelled(Exception):
    """Raised inside a job's progress callback when the user cancels it."""


@dataclass
class Job:
    id: str
    status: str = "queued"  # queued, running, done, error, cancelled
    done: int = 0
    total: int = 0
    error: str | None = None
    started: float = field(default_factory=time.time)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "done": self.done, "total": self.total, "error": self.error}


class JobManager:
    def __init__(self, runner: Callable[[Any, Callable[[int, int], None]], Any], workers: int = 2):
        self._runner = runner
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="patchstudio-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def submit(self, spec: Any) -> Job:
        with self._lock:
            job = self._jobs.get(spec.id)
            if job is not None and job.status in ("queued", "running", "done"):
                return job
            job = self._jobs[spec.id] = Job(spec.id)
        self._pool.submit(self._work, job, spec)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.status in ("queued", "running"):
            job.cancel_event.set()
        return job

    def _work(self, job: Job, spec: Any) -> None:
        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if job.cancel_event.is_set():
                raise Cancelled

        if job.cancel_event.is_set():
            job.status = "cancelled"
            return
        job.status = "running"
        try:
            self._runner(spec, progress)
            job.status = "done"
        except Cancelled:
            job.status = "cancelled"
        except InputError as exc:
            job.status, job.error = "error", str(exc)
        except Exception as exc:  # a job must never die silently: the page shows the message
            job.status, job.error = "error", f"{type(exc).__name__}: {exc}"

    def shutdown(self) -> None:
        for job in self._jobs.values():
            job.cancel_event.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
