"""Who is watching which job, so a job replaced by an edit can be cancelled when nobody else is.

Every open page that shows a job polls it (htmx, about twice a second) and names itself with a
page token (``X-Patchstudio-Page``, made by app.js once per page load); an API client polling
``/jobs/<id>.json`` counts as one watcher. A job is *watched by others* while a page or client other
than the one asking polled it within ``window`` seconds.

This is presence, not data: it lives in this process's memory and is never stored, so a GET still
writes nothing. With several web servers each knows only the pages polling through it; the cancel
rule also needs the job to be the asking client's own (``routes.explore``), so a job someone else
started or joined is never cancelled for them.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable

PAGE_HEADER = "X-Patchstudio-Page"
PAGE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
WATCH_SECONDS = 10.0


def page_token(value: str | None) -> str | None:
    """The page token of a request, if it sent a well-formed one."""
    return value if value and PAGE_TOKEN.match(value) else None


class Watchers:
    def __init__(self, window: float = WATCH_SECONDS, clock: Callable[[], float] = time.monotonic, max_jobs: int = 10_000):
        self.window = window
        self.clock = clock
        self.max_jobs = max_jobs
        self._seen: dict[str, dict[str, float]] = {}  # job id -> watcher -> when it last polled
        self._lock = threading.Lock()

    def seen(self, job_id: str, watcher: str) -> None:
        now = self.clock()
        with self._lock:
            if job_id not in self._seen and len(self._seen) >= self.max_jobs:
                self._prune(now)
            self._seen.setdefault(job_id, {})[watcher] = now

    def others(self, job_id: str, watcher: str | None) -> int:
        """How many watchers other than ``watcher`` polled this job within the window."""
        now = self.clock()
        with self._lock:
            seen = self._seen.get(job_id, {})
            return sum(1 for w, at in seen.items() if w != watcher and now - at <= self.window)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._seen.pop(job_id, None)

    def _prune(self, now: float) -> None:
        for job_id in list(self._seen):
            fresh = {w: at for w, at in self._seen[job_id].items() if now - at <= self.window}
            if fresh:
                self._seen[job_id] = fresh
            else:
                del self._seen[job_id]
        while len(self._seen) >= self.max_jobs:  # still full of fresh entries: drop the oldest job
            del self._seen[next(iter(self._seen))]
