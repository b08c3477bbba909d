"""Jobs without a queue server (SQLite): worker threads in this process claim queued rows.

A claim is one conditional UPDATE (``status='queued'`` -> ``'running'``), so any number of threads
and servers on the same database file share the queue safely. A heartbeat thread refreshes the
rows this process runs; a running row whose heartbeat is older than ``stale_seconds`` belongs to
a process that died (kill -9, power loss) and goes back to the queue, at start and every few
seconds after. The engine holds the model's lock for one forward pass at a time, so requests keep
being answered while a sweep runs. ``patchstudio worker`` on SQLite runs the same loop in its own
process, in the foreground (``run_worker``).
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
                 max_per_client: int | None = None):
        self.store = store
        self.run_spec = run_spec
        self.models = list(models)
        self.workers = workers
        self.heartbeat_seconds = heartbeat_seconds
        self.stale = dt.timedelta(seconds=stale_seconds)
        self.poll_seconds = poll_seconds
        self.max_per_client = max_per_client
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- the web side ---

    def submit(self, spec: Any, client: str, total: int = 0) -> JobRow:
        job, created = self.store.submit(spec, client, self.max_per_client, total)
        if created:
            self._wake.set()
        return job

    def get(self, job_id: str) -> JobRow | None:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRow | None:
        return self.store.cancel(job_id)

    # --- the worker side ---

    def start(self) -> None:
        if self.workers <= 0 or self._threads:
            return
        self.store.requeue_stale(self.stale, self.models)
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"patchstudio-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._beat, name="patchstudio-job-heartbeat", daemon=True)
        beat.start()
        self._threads.append(beat)

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
                claimed = self.store.claim_next(self.models, name)
            except Exception:  # the database is busy or briefly gone: try again shortly
                log.exception("could not claim a job")
                claimed = None
            if claimed is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            job_id, attempt = claimed
            with self._lock:
                self._running[job_id] = attempt
            try:
                execute(self.store, self.run_spec, job_id, attempt, should_stop=self._stop.is_set)
            finally:
                with self._lock:
                    self._running.pop(job_id, None)

    def _beat(self) -> None:
        since_sweep = 0.0
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                with self._lock:
                    running = dict(self._running)
                self.store.heartbeat(running)
                since_sweep += self.heartbeat_seconds
                if since_sweep >= self.stale.total_seconds() / 2:
                    since_sweep = 0.0
                    if self.store.requeue_stale(self.stale, self.models):
                        self._wake.set()
            except Exception:
                log.exception("job heartbeat failed")

    def shutdown(self) -> None:
        """Stop claiming; a running job is put back in the queue at its next progress report."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
