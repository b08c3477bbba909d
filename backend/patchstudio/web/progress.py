"""Where this process first saw each running job's progress, so the job's rate is timed from there,
after its setup (``jobs.eta.steady_rate``). A job's rate since it started includes the clean and
corrupted runs of every prompt before its first patched run: a 19,200-run sweep read 218 s left with
4 s to go (measured). Its rate since its progress was first seen does not.

Presence, not data (like ``watchers.py``): in this process's memory, never stored, so a GET still
writes nothing. A job rerun after its worker stopped (a new attempt) is timed afresh.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Iterable

from patchstudio.jobs.store import JobRow


class ProgressLog:
    def __init__(self) -> None:
        self._first: dict[tuple[str, int], tuple[dt.datetime, int]] = {}  # (job id, attempt) -> (when, done)
        self._lock = threading.Lock()

    def observe(self, running: Iterable[JobRow], now: dt.datetime) -> dict[str, tuple[dt.datetime, int]]:
        """Note ``running`` jobs (all of them: those not given are forgotten) as seen at ``now``;
        returns job id -> (when, done) its progress was first seen, for those with progress."""
        with self._lock:
            kept: dict[tuple[str, int], tuple[dt.datetime, int]] = {}
            for job in running:
                if job.status != "running" or job.done <= 0:
                    continue
                key = (job.id, job.attempts)
                first = self._first.get(key)
                kept[key] = first if first is not None and first[1] <= job.done else (now, job.done)
            self._first = kept
            return {job_id: seen for (job_id, _), seen in kept.items()}
