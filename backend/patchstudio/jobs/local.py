"""Jobs without a queue server (SQLite): worker threads in this process claim queued rows.

A claim is one conditional UPDATE (``status='queued'`` -> ``'running'``), so any number of threads
and servers on the same database file share the queue safely. A heartbeat thread refreshes the
rows this process runs; a running row whose heartbeat is older than ``stale_seconds`` belongs to
a process that died (kill -9, power loss) or to an attempt whose last write failed (a full disk),
and goes back to the queue, at start and every few seconds after (``JobStore.requeue_stale``; a
web process without worker threads sweeps too). The engine holds the model's lock for one forward
pass at a time, so requests keep being answered while a sweep runs. ``patchstudio worker`` on
SQLite runs the same loop in its own process, in the foreground (``run_worker``).

A job's exception never ends its worker thread (``execute`` turns it into the job's error, and the
loop survives anything else); the heartbeat thread also restarts a worker thread that died.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from typing import Any

from patchstudio.jobs.runner import RunSpec, execute, worker_name
from patchstudio.jobs.store import JobRow, JobStore

log = logging.getLogger("patchstudio.jobs")


class LocalQueue:
    kind = "local"

    def __init__(self, store: JobStore, run_spec: RunSpec, models: list[str], *, workers: int = 1,
                 heartbeat_seconds: float = 2.0, stale_seconds: float = 30.0, poll_seconds: float = 1.0,
                 max_per_client: int | None = None, limits: dict[str, Any] | None = None):
        self.store = store
        self.run_spec = run_spec
        self.models = list(models)
        self.workers = workers
        self.heartbeat_seconds = heartbeat_seconds
        self.stale = dt.timedelta(seconds=stale_seconds)
        self.store.stale = self.stale
        self.poll_seconds = poll_seconds
        self.limits = {"max_active": max_per_client, **(limits or {})}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._beat_thread: threading.Thread | None = None

    # --- the web side ---

    def submit(self, spec: Any, client: str, total: int = 0, computation: str | None = None) -> JobRow:
        job, created = self.store.submit(spec, client, total=total, computation=computation, **self.limits)
        if job.status == "queued":
            self._wake.set()
        return job

    def get(self, job_id: str) -> JobRow | None:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRow | None:
        return self.store.cancel(job_id)

    # --- the worker side ---

    def start(self) -> None:
        """Start the worker threads (none when ``workers`` is 0) and the heartbeat thread, which
        also sweeps stale jobs: a web process without workers still settles them."""
        if self._beat_thread is not None:
            return
        try:
            self.store.requeue_stale(self.stale)
        except Exception:  # the database is briefly unavailable: the heartbeat thread sweeps again
            log.exception("could not sweep stale jobs at start")
        self._workers = [self._spawn(i) for i in range(self.workers)]
        self._beat_thread = threading.Thread(target=self._beat, name="patchstudio-job-heartbeat", daemon=True)
        self._beat_thread.start()

    def _spawn(self, i: int) -> threading.Thread:
        thread = threading.Thread(target=self._work, name=f"patchstudio-job-{i}", daemon=True)
        thread.start()
        return thread

    def run_worker(self, concurrency: int = 1) -> None:
        """``patchstudio worker`` on SQLite: ``concurrency`` worker threads, in the foreground, until
        SIGINT or SIGTERM (call it from the main thread)."""
        self.workers = concurrency
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _work(self) -> None:
        name = worker_name()
        while not self._stop.is_set():
            try:
                self._take_one(name)
            except Exception:  # never let one job (or one bad moment of the database) end this thread
                log.exception("job worker thread: unexpected error; going on")
                self._stop.wait(self.poll_seconds)

    def _take_one(self, name: str) -> None:
        try:
            claimed = self.store.claim_next(self.models, name)
        except Exception:  # the database is busy or briefly gone: try again shortly
            log.exception("could not claim a job")
            claimed = None
        if claimed is None:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            return
        job_id, attempt = claimed
        with self._lock:
            self._running[job_id] = attempt
        try:
            execute(self.store, self.run_spec, job_id, attempt, should_stop=self._stop.is_set,
                    write_seconds=self.stale.total_seconds())
        finally:
            with self._lock:
                self._running.pop(job_id, None)

    def _beat(self) -> None:
        since_sweep = 0.0
        while not self._stop.wait(self.heartbeat_seconds):
            for i, thread in enumerate(self._workers):
                if not thread.is_alive() and not self._stop.is_set():
                    log.error("job worker thread %s had stopped; starting it again", thread.name)
                    self._workers[i] = self._spawn(i)
            try:
                with self._lock:
                    running = dict(self._running)
                self.store.heartbeat(running)
                since_sweep += self.heartbeat_seconds
                if since_sweep >= self.stale.total_seconds() / 3:
                    since_sweep = 0.0
                    if self.store.requeue_stale(self.stale):
                        self._wake.set()
            except Exception:
                log.exception("job heartbeat failed")

    def shutdown(self) -> None:
        """Stop claiming; a running job is put back in the queue at its next progress report."""
        self._stop.set()
        self._wake.set()
        for thread in [*self._workers, *([self._beat_thread] if self._beat_thread else [])]:
            thread.join(timeout=30)
        self._workers, self._beat_thread = [], None
