"""The job queue: long sweeps run by workers, with durable state in the store's ``jobs`` table.

Two dispatchers share that table, its progress, its cancellation and its fencing (``store.py``):

- **PostgreSQL** (``DATABASE_URL``): jobs go through `Procrastinate <https://procrastinate.readthedocs.io>`_,
  a queue per model (``model.<name>``), the spec id as queueing lock (the same experiment is queued
  once), stalled-job retry for a worker that died (SIGKILL, a lost machine). ``patchstudio worker
  --models a,b`` runs a worker that loads its models once; start as many as you like, anywhere that
  reaches the database (``jobs.pg``).
- **SQLite** (the single-machine default): worker threads in the web process claim queued rows with
  one conditional UPDATE; a job found running with a stale heartbeat (its server was killed) is
  requeued, so jobs survive restarts and every server on the same file sees them (``jobs.local``).

Either way the web process only writes a row (and, on PostgreSQL, a queue entry); a page reads the
row; a worker reports progress and reads the cancel flag through the row.
"""

from __future__ import annotations

from typing import Any, Protocol

from patchstudio.jobs.runner import RunSpec, execute
from patchstudio.store import JobRow, Store, TooManyJobs


class JobQueue(Protocol):
    kind: str

    def start(self) -> None: ...

    def submit(self, spec: Any, client: str, total: int = 0) -> JobRow: ...

    def get(self, job_id: str) -> JobRow | None: ...

    def cancel(self, job_id: str) -> JobRow | None: ...

    def shutdown(self) -> None: ...


def open_queue(settings: Any, store: Store, run_spec: RunSpec, models: list[str]) -> JobQueue:
    """The dispatcher for this database: Procrastinate on PostgreSQL, threads on anything else."""
    if store.engine.dialect.name == "postgresql":
        from patchstudio.jobs.pg import ProcrastinateQueue

        return ProcrastinateQueue(store, max_per_client=settings.max_jobs_per_client)
    from patchstudio.jobs.local import LocalQueue

    return LocalQueue(
        store,
        run_spec,
        models,
        workers=settings.local_workers,
        heartbeat_seconds=settings.job_heartbeat_seconds,
        stale_seconds=settings.job_stale_seconds,
        max_per_client=settings.max_jobs_per_client,
    )


__all__ = ["JobQueue", "JobRow", "RunSpec", "TooManyJobs", "execute", "open_queue"]
