"""How long a job has left, from measured throughput (patched runs per second).

A running job that has reported progress is timed by its own rate so far (done / seconds since it
started): it is measured on this job's prompts and this machine. Before that (queued, or running
but not reported yet) the model's rate is used, measured over its recently finished jobs (total
patched runs / seconds they ran). A queued job also waits for the work ahead of it on the same
model: the engine runs one forward pass of a model at a time, so jobs on one model share its rate.
No measurement, no estimate: the page says so rather than guess.

Pure: rows in, numbers out (the store reads the rows; the web layer words the answer).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Protocol


class JobLike(Protocol):
    id: str
    model_name: str
    status: str
    done: int
    total: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class Estimate:
    rate: float | None  # patched runs per second
    basis: str | None  # "this job" or "model" (recent jobs on the same model); None: no measurement
    seconds_left: float | None  # None: unknown (no rate, or the size is not known yet)

    def as_dict(self) -> dict:
        return {"rate": self.rate, "basis": self.basis, "seconds_left": self.seconds_left}


MIN_SECONDS = 0.5  # shorter spans time nothing but the clock's resolution


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def model_rates(finished: Iterable[JobLike]) -> dict[str, float]:
    """Patched runs per second per model, over finished jobs (total runs / total seconds)."""
    runs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for job in finished:
        if job.started_at is None or job.finished_at is None or job.total <= 0:
            continue
        spent = (_utc(job.finished_at) - _utc(job.started_at)).total_seconds()
        if spent <= 0:
            continue
        runs[job.model_name] = runs.get(job.model_name, 0.0) + job.total
        seconds[job.model_name] = seconds.get(job.model_name, 0.0) + spent
    return {m: runs[m] / max(seconds[m], MIN_SECONDS) for m in runs}


def own_rate(job: JobLike, now: dt.datetime) -> float | None:
    """A running job's throughput so far, once it has done some work for long enough to time."""
    if job.status != "running" or job.started_at is None or job.done <= 0:
        return None
    elapsed = (_utc(now) - _utc(job.started_at)).total_seconds()
    return job.done / elapsed if elapsed >= MIN_SECONDS else None


def estimate(job: JobLike, now: dt.datetime, model_rate: float | None, ahead: float = 0.0) -> Estimate:
    """Seconds left for ``job``. ``ahead``: patched runs still to do, on the same model, before a
    queued job starts (the remaining work of the running jobs and of those queued before it)."""
    if job.status not in ("queued", "running"):
        return Estimate(None, None, None)
    mine = own_rate(job, now)
    rate, basis = (mine, "this job") if mine is not None else (model_rate, "model" if model_rate else None)
    if not rate:
        return Estimate(None, None, None)
    if job.total <= 0:  # its size is not known yet
        return Estimate(rate, basis, None)
    left = max(job.total - job.done, 0) + (ahead if job.status == "queued" else 0.0)
    return Estimate(rate, basis, left / rate)


def estimates(active: list[JobLike], finished: Iterable[JobLike], now: dt.datetime) -> dict[str, Estimate]:
    """An estimate for each active job: running ones first, then queued ones in queue order, each
    queued job waiting for the remaining work ahead of it on its model."""
    rates = model_rates(finished)
    out: dict[str, Estimate] = {}
    ahead: dict[str, float] = {}
    running = [j for j in active if j.status == "running"]
    queued = sorted((j for j in active if j.status == "queued"), key=lambda j: (_utc(j.created_at), j.id))
    for job in running + queued:
        out[job.id] = estimate(job, now, rates.get(job.model_name), ahead.get(job.model_name, 0.0))
        ahead[job.model_name] = ahead.get(job.model_name, 0.0) + max(job.total - job.done, 0)
    return out


def words(seconds: float | None) -> str:
    """'about 40 s', 'about 3 min', 'about 2 h 5 min'."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"about {max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"
