"""Jobs on PostgreSQL through Procrastinate: a queue per model, any number of worker processes.

- The web process writes the job's row (``JobStore.submit``) and defers one Procrastinate job on
  the queue ``model.<name>`` with the spec id as *queueing lock* (the same experiment is never
  waiting twice) and as *lock* (never running twice at once).
- ``patchstudio worker --models a,b`` loads those models once and runs a Procrastinate worker on
  their queues (``ProcrastinateQueue.run_worker``). Procrastinate keeps a heartbeat per worker;
  each worker also looks every few seconds for *stalled* jobs (running on a worker whose heartbeat
  stopped: SIGKILL, a lost machine) and retries them, so another worker reruns them from the start.
- Progress and cancellation go through the job's row; a retried attempt claims the row again
  with a higher attempt number, which fences off any write from the one it replaced.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.schema import SchemaManager
from sqlalchemy.engine import make_url

from patchstudio.jobs.runner import RunSpec, execute, worker_name
from patchstudio.jobs.store import JobRow, JobStore

log = logging.getLogger("patchstudio.jobs")

TASK = "patchstudio.run_job"
SCHEMA_LOCK = 74280002  # pg advisory lock id: one process applies Procrastinate's schema


def queue_name(model: str) -> str:
    return f"model.{model}"


def conninfo(url: str) -> str:
    """libpq's form of a SQLAlchemy URL (``postgresql+psycopg://...`` -> ``postgresql://...``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run_job(context: Any, job_id: str) -> str:
    runtime: WorkerRuntime = context.additional_context["patchstudio"]
    return runtime.run(job_id)


def make_app(url: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(url)))
    # A failing spec is reported in its row, never retried; a dead worker's job is retried as stalled.
    app.task(name=TASK, pass_context=True)(_run_job)
    return app


def ensure_schema(url: str) -> None:
    """Apply Procrastinate's schema once per database (workers and web servers may start together)."""
    import psycopg

    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
                conn.execute(SchemaManager.get_schema())
                log.info("applied Procrastinate's schema")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


class ProcrastinateQueue:
    """The web side (submit, read, cancel) and, in a ``patchstudio worker`` process, the worker."""

    kind = "procrastinate"

    def __init__(self, store: JobStore, run_spec: RunSpec, models: list[str], *, max_per_client: int | None = None,
                 heartbeat_seconds: float = 2.0, stale_seconds: float = 30.0):
        self.store = store
        self.run_spec = run_spec
        self.models = list(models)
        self.max_per_client = max_per_client
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        ensure_schema(store.db.url)
        self.app = make_app(store.db.url)
        self._open = False

    def start(self) -> None:
        if not self._open:
            self.app.open()
            self._open = True

    def submit(self, spec: Any, client: str, total: int = 0) -> JobRow:
        job, created = self.store.submit(spec, client, self.max_per_client, total)
        if created:
            deferrer = self.app.configure_task(TASK, queue=queue_name(spec.model), queueing_lock=spec.id, lock=spec.id)
            try:
                self.store.set_queue_job_id(spec.id, deferrer.defer(job_id=spec.id))
            except AlreadyEnqueued:  # a twin request queued it a moment ago
                pass
            except Exception:
                log.exception("could not queue job %s", spec.id)
                attempt = self.store.claim(spec.id, "web")
                if attempt is not None:
                    self.store.finish(spec.id, attempt, "error", "the job queue could not take this job; try again")
        return self.store.get(spec.id) or job

    def get(self, job_id: str) -> JobRow | None:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRow | None:
        job = self.store.cancel(job_id)
        if job is not None and job.queue_job_id is not None:
            try:  # a waiting entry is dropped; a running one also sees the flag in its row
                self.app.job_manager.cancel_job_by_id(job.queue_job_id, abort=True)
            except Exception:
                log.exception("could not cancel queue entry of job %s", job_id)
        return self.store.get(job_id)

    def shutdown(self) -> None:
        if self._open:
            self.app.close()
            self._open = False

    def run_worker(self, concurrency: int = 1) -> None:
        """Run a Procrastinate worker on these models' queues, in the foreground, until SIGINT or SIGTERM."""
        queues = [queue_name(m) for m in self.models]
        runtime = WorkerRuntime(self.store, self.run_spec)

        async def main() -> None:
            async with self.app.open_async():
                recovery = asyncio.create_task(_retry_stalled(self.app, queues, self.stale_seconds))
                try:
                    await self.app.run_worker_async(
                        queues=queues,
                        concurrency=concurrency,
                        name=worker_name(),
                        additional_context={"patchstudio": runtime},
                        update_heartbeat_interval=self.heartbeat_seconds,
                        stalled_worker_timeout=self.stale_seconds,
                        fetch_job_polling_interval=2.0,
                        install_signal_handlers=True,
                    )
                finally:
                    recovery.cancel()

        log.info("worker for %s on queues %s", ", ".join(self.models), ", ".join(queues))
        asyncio.run(main())


class WorkerRuntime:
    """What a worker's tasks need: the store and a function that runs a spec on a loaded model."""

    def __init__(self, store: JobStore, run_spec: RunSpec):
        self.store = store
        self.run_spec = run_spec

    def run(self, job_id: str) -> str:
        attempt = self.store.claim(job_id, worker_name(), statuses=("queued", "running"))
        if attempt is None:  # cancelled before it started, or already done
            log.info("job %s: nothing to do", job_id)
            return "skipped"
        return execute(self.store, self.run_spec, job_id, attempt)


async def _retry_stalled(app: procrastinate.App, queues: list[str], stale_seconds: float) -> None:
    """Retry jobs of workers whose heartbeat stopped (every worker runs this; retrying is idempotent)."""
    while True:
        await asyncio.sleep(max(stale_seconds / 3, 0.5))
        try:
            for queue in queues:
                for job in await app.job_manager.get_stalled_jobs(queue=queue, seconds_since_heartbeat=stale_seconds):
                    log.warning("retrying job %s (queue %s): its worker stopped sending heartbeats", job.id, queue)
                    await app.job_manager.retry_job(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stalled-job check failed")
