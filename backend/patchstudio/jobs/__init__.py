"""The job queue: long sweeps run by workers, with durable state in the ``jobs`` table.

Two dispatchers share that table, its progress, its cancellation and its fencing (``jobs/store.py``,
in the same database as the run records):

- **PostgreSQL** (``DATABASE_URL``): jobs go through `Procrastinate <https://procrastinate.readthedocs.io>`_,
  a queue per model (``model.<name>``) whose entries are turns to run a row, the spec id as queueing
  lock (the same experiment is queued once), stalled-job retry for a worker that died (SIGKILL, a
  lost machine), rows and queue reconciled every few seconds. ``patchstudio worker --models a,b``
  runs a worker that loads its models once; start as many as you like, anywhere that reaches the
  database (``jobs.pg``).
- **SQLite** (the single-machine default): worker threads in the web process claim queued rows with
  one conditional UPDATE; a job found running with a stale heartbeat (its server was killed, its
  last write failed) is requeued, so jobs survive restarts and every server on the same file sees
  them (``jobs.local``).

Either way the web process only writes a row (and, on PostgreSQL, a queue entry); a page reads the
row (``queue.store``); a worker reports progress and reads the cancel flag through the row.
``queue.run_worker`` makes this process a worker until SIGINT or SIGTERM (``patchstudio worker``).
"""

from __future__ import annotations

from typing import Any, Protocol

from patchstudio.jobs.runner import RunSpec, execute
from patchstudio.jobs.store import ACTIVE, Client, JobRow, JobStore, QueueFull, TooManyJobs
from patchstudio.store import Store


class JobQueue(Protocol):
    kind: str
    store: JobStore  # the job rows: pages read them here

    def start(self) -> None: ...

    def submit(self, spec: Any, client: str, total: int = 0, computation: str | None = None) -> JobRow: ...

    def get(self, job_id: str) -> JobRow | None: ...

    def cancel(self, job_id: str) -> JobRow | None: ...

    def run_worker(self, concurrency: int = 1) -> int | None: ...

    def shutdown(self) -> None: ...


def open_queue(settings: Any, store: Store, run_spec: RunSpec, models: list[str]) -> JobQueue:
    """The dispatcher for this database, with its job store on ``store``'s engine: Procrastinate on
    PostgreSQL, threads on anything else. ``models``: those this process runs (a worker's, or the
    web server's own worker threads')."""
    jobs = JobStore(store, stale_seconds=settings.job_stale_seconds, max_attempts=settings.job_max_attempts)
    timing = {"heartbeat_seconds": settings.job_heartbeat_seconds, "stale_seconds": settings.job_stale_seconds}
    limits = {"max_per_address": settings.max_jobs_per_address, "max_queued": settings.max_queued_jobs}
    if store.postgresql:
        from patchstudio.jobs.pg import ProcrastinateQueue

        return ProcrastinateQueue(jobs, run_spec, models, max_per_client=settings.max_jobs_per_client, limits=limits, **timing)
    from patchstudio.jobs.local import LocalQueue

    return LocalQueue(jobs, run_spec, models, workers=settings.local_workers, max_per_client=settings.max_jobs_per_client,
                      limits=limits, **timing)


__all__ = ["ACTIVE", "Client", "JobQueue", "JobRow", "JobStore", "QueueFull", "RunSpec", "TooManyJobs", "execute", "open_queue"]
