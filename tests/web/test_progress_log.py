"""web/progress.py: where this process first saw each running job's progress (in memory only)."""

from __future__ import annotations

import datetime as dt

from patchstudio.jobs.store import JobRow
from patchstudio.web.progress import ProgressLog

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def row(job_id: str, status: str, done: int, attempts: int = 1) -> JobRow:
    return JobRow(id=job_id, spec_json="{}", method="activation_patching", model_name="default", status=status, done=done,
                  total=1000, error=None, client="c", cancel_requested=False, attempts=attempts, worker=None,
                  queue_job_id=None, created_at=T0, started_at=T0, finished_at=None, heartbeat_at=None)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_first_progress_is_kept_until_the_job_stops_running_or_reruns():
    log = ProgressLog()
    assert log.observe([row("a", "running", 0)], at(1)) == {}  # no progress yet: nothing to time from
    assert log.observe([row("a", "running", 100)], at(2)) == {"a": (at(2), 100)}
    assert log.observe([row("a", "running", 400), row("b", "running", 50)], at(3)) == {"a": (at(2), 100), "b": (at(3), 50)}
    assert log.observe([row("a", "running", 30, attempts=2)], at(4)) == {"a": (at(4), 30)}  # a rerun: timed afresh
    assert log.observe([], at(5)) == {}  # no longer running: forgotten
