"""Jobs on PostgreSQL through Procrastinate: a queue per model, any number of worker processes.

The jobs table is the truth; a Procrastinate job ("ticket") is a worker's turn to run one row.

- The web process writes the job's row (``JobStore.submit``) and defers one ticket on the queue
  ``model.<name>``, with the spec id as *queueing lock* (a row never waits twice) and the row's
  priority (fairness across clients: ``jobs/store.py``); Procrastinate hands out tickets highest
  priority first.
- ``patchstudio worker --models a,b`` loads those models once and runs a Procrastinate worker on
  their queues (``ProcrastinateQueue.run_worker``). A ticket claims its row (a conditional UPDATE:
  queued, or running with a silent heartbeat), runs it, and reports through the row, heart-beating
  every ``heartbeat_seconds``; a retried attempt claims the row with a higher attempt number, which
  fences off any write from the one it replaced.
- Every worker and every web process reconciles the rows with the queue every few seconds: a
  running row whose heartbeat stopped goes back to the queue (``JobStore.requeue_stale``), and a
  queued row with no waiting or running ticket (its ticket failed with the database, or was
  dropped) gets a new one. Each worker also retries the tickets of workers whose Procrastinate
  heartbeat stopped (SIGKILL, a lost machine).
- A worker watches itself: when it cannot reach the database for ``stale_seconds``, or its own
  Procrastinate registration is gone or silent (another worker pruned it during an outage, after
  which its heartbeat would be written nowhere and its jobs rerun elsewhere), it stops taking
  jobs, finishes the running one and exits with status 1, for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import faulthandler
import io
import logging
import os
import signal
import threading
import time
from typing import Any

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued, NoResult
from procrastinate.jobs import Status
from procrastinate.schema import SchemaManager
from procrastinate.worker import Worker
from sqlalchemy import text
from sqlalchemy.engine import make_url

from patchstudio.jobs.runner import RunSpec, execute, worker_name
from patchstudio.jobs.store import JobRow, JobStore
from patchstudio.store import unavailable

log = logging.getLogger("patchstudio.jobs")

TASK = "patchstudio.run_job"
SCHEMA_LOCK = 74280002  # pg advisory lock id: one process applies Procrastinate's schema
EXIT_LOST = 1  # the worker's exit status when it stopped because it lost the database or its registration

# queued rows with no ticket waiting or running for them (but for those just queued: their
# submitter is deferring one now). A ticket's task claims its row first thing, so a ticket "doing"
# for longer than the stale time on a row still queued is not running it: its worker ran it to an
# end (released it, or failed to write) but could not record the ticket's own end in an outage, and
# stays alive with its Procrastinate heartbeat fresh, so no stalled-ticket retry ever frees it. Such
# a row gets a new ticket too (a spare ticket is harmless: only one claim of a row succeeds).
UNTICKETED = text("""
    SELECT j.id, j.model_name, COALESCE(j.priority, 0) AS priority FROM jobs j
     WHERE j.status = 'queued' AND j.created_at < :settled AND NOT EXISTS (
           SELECT 1 FROM procrastinate_jobs p WHERE p.queueing_lock = j.id AND (p.status = 'todo' OR (
                  p.status = 'doing' AND COALESCE((SELECT max(e.at) FROM procrastinate_events e
                                                    WHERE e.job_id = p.id AND e.type = 'started'), NOW())
                                         >= NOW() - make_interval(secs => :stale))))
""")


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
    """The web side (submit, read, cancel, reconcile) and, in a ``patchstudio worker`` process, the worker."""

    kind = "procrastinate"

    def __init__(self, store: JobStore, run_spec: RunSpec, models: list[str], *, max_per_client: int | None = None,
                 limits: dict[str, Any] | None = None, heartbeat_seconds: float = 2.0, stale_seconds: float = 30.0):
        self.store = store
        self.run_spec = run_spec
        self.models = list(models)
        self.limits = {"max_active": max_per_client, **(limits or {})}
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_seconds = stale_seconds
        store.stale = dt.timedelta(seconds=stale_seconds)
        ensure_schema(store.db.url)
        self.app = make_app(store.db.url)
        self._open = False
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None

    # --- the web side ---

    def start(self) -> None:
        if not self._open:
            self.app.open()
            self._open = True
        if self._reconciler is None:
            self._reconciler = threading.Thread(target=self._reconcile_loop, name="patchstudio-job-reconciler", daemon=True)
            self._reconciler.start()

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(max(self.stale_seconds / 3, 0.5)):
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciling jobs with the queue failed; trying again shortly")

    def _unticketed(self) -> list[tuple[str, str, int]]:
        """Silent running rows go back to the queue; then the queued rows with no ticket."""
        self.store.requeue_stale()
        settled = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=max(self.heartbeat_seconds, 1.0))
        with self.store.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(UNTICKETED, {"settled": settled, "stale": self.stale_seconds}).all()]
        for job_id, _, _ in rows:
            log.warning("job %s was queued without a ticket (its ticket failed or was lost); queueing one", job_id)
        return rows  # type: ignore[return-value]

    def reconcile(self) -> None:
        """Silent running rows back to the queue; a ticket for every queued row that has none."""
        for job_id, model, priority in self._unticketed():
            self._defer(job_id, model, priority)

    def _deferrer(self, job_id: str, model: str, priority: int) -> Any:
        return self.app.configure_task(TASK, queue=queue_name(model), queueing_lock=job_id, priority=priority)

    def _defer(self, job_id: str, model: str, priority: int) -> None:
        try:
            self.store.set_queue_job_id(job_id, self._deferrer(job_id, model, priority).defer(job_id=job_id))
        except AlreadyEnqueued:  # a twin request (or the reconciler) queued it a moment ago
            pass

    def submit(self, spec: Any, client: str, total: int = 0, computation: str | None = None) -> JobRow:
        job, created = self.store.submit(spec, client, total=total, computation=computation, **self.limits)
        if job.status == "queued":  # new, or asked for again: make sure a ticket waits for it
            try:
                self._defer(spec.id, spec.model, job.priority or 0)
            except Exception:  # the row is queued: the reconciler gives it a ticket once the queue answers
                log.exception("could not queue job %s now; the reconciler will", spec.id)
        return self.store.get(spec.id) or job

    def get(self, job_id: str) -> JobRow | None:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRow | None:
        """The row says cancelled (or, running, cancel-requested); a waiting ticket for it finds
        nothing to claim and ends at once."""
        return self.store.cancel(job_id)

    def shutdown(self) -> None:
        self._stop.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=10)
            self._reconciler = None
        if self._open:
            self.app.close()
            self._open = False

    # --- the worker ---

    def run_worker(self, concurrency: int = 1) -> int:
        """Run a Procrastinate worker on these models' queues, in the foreground, until SIGINT or
        SIGTERM (then 0), or until it loses the database or its registration (then ``EXIT_LOST``)."""
        queues = [queue_name(m) for m in self.models]
        runtime = WorkerRuntime(self.store, self.run_spec, write_seconds=self.stale_seconds)
        outcome = {"code": 0}

        async def main() -> None:
            async with self.app.open_async():
                worker = Worker(self.app, queues=queues, concurrency=concurrency, name=worker_name(),
                                additional_context={"patchstudio": runtime}, update_heartbeat_interval=self.heartbeat_seconds,
                                stalled_worker_timeout=self.stale_seconds, fetch_job_polling_interval=2.0,
                                install_signal_handlers=False)
                asked = asyncio.Event()

                def stop(*_: Any) -> None:
                    asked.set()
                    worker.stop()

                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop)
                ended = asyncio.Event()  # the side loops' own stop (a cancel alone can be swallowed; see below)
                side = [asyncio.create_task(_retry_stalled(self.app, queues, self.stale_seconds, ended)),
                        asyncio.create_task(self._watch(worker, runtime, asked, ended)),
                        asyncio.create_task(self._reconcile_async(ended))]
                try:
                    await worker.run()
                except Exception:
                    log.exception("the worker stopped on an error")
                finally:
                    ended.set()
                    if not asked.is_set():
                        # from here on the process ends within this bound whatever blocks
                        _exit_if_shutdown_hangs(max(5.0, 2 * self.stale_seconds))
                    for task in side:
                        task.cancel()
                    # a side task that outlives its cancel (Python 3.11's wait_for returns its inner
                    # result when a cancel arrives just as that finishes) kept a plain gather waiting
                    # forever: the outage test's "Stopped worker", then no exit. Bounded, and named
                    _, pending = await asyncio.wait(side, timeout=max(2.0, self.heartbeat_seconds * 2))
                    for task in pending:
                        stack = io.StringIO()
                        task.print_stack(file=stack)
                        log.error("a side task did not stop when cancelled: %s", stack.getvalue())
                if not asked.is_set():
                    log.error("the worker stopped without being asked to; exiting with status %d for its supervisor to "
                              "restart it", EXIT_LOST)
                    outcome["code"] = EXIT_LOST

        log.info("worker for %s on queues %s", ", ".join(self.models), ", ".join(queues))
        try:
            asyncio.run(main())
        except Exception:  # closing the app on a database that is gone
            log.exception("the worker could not shut down cleanly")
            outcome["code"] = outcome["code"] or EXIT_LOST
        return outcome["code"]

    async def _reconcile_async(self, ended: asyncio.Event) -> None:
        """``reconcile`` on the worker's event loop (its app is open there, for async calls only)."""
        while not ended.is_set():
            await asyncio.sleep(max(self.stale_seconds / 3, 0.5))
            try:
                for job_id, model, priority in await asyncio.to_thread(self._unticketed):
                    try:
                        await self._deferrer(job_id, model, priority).defer_async(job_id=job_id)
                    except AlreadyEnqueued:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reconciling jobs with the queue failed (%s); trying again shortly", type(exc).__name__)

    async def _watch(self, worker: Worker, runtime: "WorkerRuntime", asked: asyncio.Event, ended: asyncio.Event) -> None:
        """Beat for the rows this worker runs, and stop the worker (exit status 1) when the database
        has been unreachable for ``stale_seconds`` or its Procrastinate registration is gone or has
        been silent for twice that. It goes on beating while the stopped worker finishes its job."""
        failing_since: float | None = None
        stopping = False
        while not ended.is_set():
            await asyncio.sleep(self.heartbeat_seconds)
            problem = None
            try:
                await asyncio.to_thread(self.store.heartbeat, runtime.running())
                if worker.worker_id is not None:
                    try:
                        row = await asyncio.wait_for(self.app.connector.execute_query_one_async(
                            "SELECT EXTRACT(EPOCH FROM (NOW() - last_heartbeat)) AS age FROM procrastinate_workers "
                            "WHERE id = %(worker_id)s", worker_id=worker.worker_id), timeout=max(self.stale_seconds / 2, 1.0))
                    except NoResult:
                        problem = "its registration in the queue is gone (pruned while it could not send heartbeats)"
                    else:
                        if float(row["age"]) > 2 * self.stale_seconds:
                            problem = f"its queue heartbeat stopped {float(row['age']):.0f} s ago"
                failing_since = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if unavailable(exc) or isinstance(exc, TimeoutError):
                    log.warning("worker self-check: the database is unavailable (%s)", type(exc).__name__)
                else:
                    log.exception("worker self-check failed")
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since >= self.stale_seconds:
                    problem = f"it has not reached the database for {time.monotonic() - failing_since:.0f} s"
            if problem is not None and not stopping and not asked.is_set():
                log.error("this worker stops taking jobs: %s. It finishes its running job, then exits with status %d "
                          "for its supervisor to restart it", problem, EXIT_LOST)
                stopping = True
                worker.stop()


class WorkerRuntime:
    """What a worker's tasks need: the store, a function that runs a spec on a loaded model, and
    the rows it runs now (for the heartbeat)."""

    def __init__(self, store: JobStore, run_spec: RunSpec, write_seconds: float = 60.0):
        self.store = store
        self.run_spec = run_spec
        self.write_seconds = write_seconds
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def running(self) -> dict[str, int]:
        with self._lock:
            return dict(self._running)

    def run(self, job_id: str) -> str:
        attempt = self.store.claim(job_id, worker_name(), statuses=("queued", "running"))
        if attempt is None:  # cancelled, done, or running alive elsewhere
            log.info("job %s: nothing to do", job_id)
            return "skipped"
        with self._lock:
            self._running[job_id] = attempt
        try:
            return execute(self.store, self.run_spec, job_id, attempt, write_seconds=self.write_seconds)
        finally:
            with self._lock:
                self._running.pop(job_id, None)


def _exit_if_shutdown_hangs(seconds: float) -> None:
    """End the process with ``EXIT_LOST`` if shutting down takes over ``seconds``: closing the app's
    pool and the threads still inside a call to a database that is gone can block, and a worker that
    neither works nor exits is the half-dead one its supervisor cannot see (seen in the outage test:
    "Stopped worker", then no exit)."""
    def hard_exit() -> None:
        log.error("shutting down took over %.0f s (a database call still blocked); exiting with status %d; "
                  "its threads' stacks follow", seconds, EXIT_LOST)
        logging.shutdown()
        faulthandler.dump_traceback(all_threads=True)
        os._exit(EXIT_LOST)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True  # a clean exit does not wait for it
    timer.start()


async def _retry_stalled(app: procrastinate.App, queues: list[str], stale_seconds: float, ended: asyncio.Event) -> None:
    """Retry tickets of workers whose heartbeat stopped (every worker runs this; retrying is
    idempotent). A ticket that cannot go back (its row has a newer waiting ticket) is closed."""
    while not ended.is_set():
        await asyncio.sleep(max(stale_seconds / 3, 0.5))
        try:
            for queue in queues:
                for job in await app.job_manager.get_stalled_jobs(queue=queue, seconds_since_heartbeat=stale_seconds):
                    log.warning("retrying job %s (queue %s): its worker stopped sending heartbeats", job.id, queue)
                    try:
                        await app.job_manager.retry_job(job)
                    except Exception:
                        if job.id is not None:
                            await app.job_manager.finish_job_by_id_async(job.id, Status.FAILED, delete_job=False)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stalled-job check failed")
