"""How long a job has left, from measured throughput (patched runs per second).

A patched run's cost depends on the kind of experiment: on the default model path patching runs
about 130 patched runs a second and a per-position head sweep about 3,000; and a job spends its
first seconds on the clean and corrupted runs of every prompt before its first patched run. One
rate per model mixed the kinds, and a running job's rate since it started carried its setup.
Measured with ``bench/eta_measure.py`` (2 shared cores, load 4-6): after a path-patching job, a
30,720-run head sweep read 127 s left for its first 2 s and 438 s at 2.6 s, and took 6.7 s
(the issue's "about 2 min" for 3.5 s); a 19,200-run sweep read 112 s with 1.1 s left (the
issue's "8 min with 57 s left").

So a job is timed from the first second, queued or running, by its kind's rate on its model
(``kind_of``: method, component, positions; total patched runs over the seconds they ran, over
recently finished jobs of that kind, else of that method). Once its progress has been seen for a
second (``since``: the web layer remembers where it first saw it), its rate since then decides,
setup excluded; before that its own rate since it started weighs in by the fraction done, and
alone once it has outrun its kind's prediction. After this change the same runs read: a sweep of
a measured kind 7.8 s with 5.7 s left at 0.2 s, within 2.4x throughout; the first sweep of a
kind "not measured yet" until a second after its first report (3.1 s), then 3.1 s with 2.9 s
left. A queued job starts over from nothing (a requeued one too) and waits for the work ahead of
it on the same model: the engine runs one forward pass of a model at a time. No measurement, no
estimate: the page says so rather than guess.

Pure: rows in, numbers out (the store reads the rows; the web layer words the answer).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence


class JobLike(Protocol):
    id: str
    model_name: str
    status: str
    done: int
    total: int
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    # also read when present: ``method`` and ``spec_json`` (the job's kind)


@dataclass(frozen=True)
class Estimate:
    rate: float | None  # patched runs per second
    basis: str | None  # "this job", "model" (its kind's recent jobs) or "model, then this job"; None: no measurement
    seconds_left: float | None  # None: unknown (no rate, or the size is not known yet)

    def as_dict(self) -> dict:
        return {"rate": self.rate, "basis": self.basis, "seconds_left": self.seconds_left}


BASIS_WORDS = {
    "this job": "this job so far",
    "model": "model's recent jobs",
    "model, then this job": "model's recent jobs, then this job's own rate",
}
MIN_SECONDS = 0.5  # shorter spans time nothing but the clock's resolution
STEADY_SECONDS = 1.0  # a running job's progress seen for this long times its rate after its setup

Kind = tuple  # (model, method, component, positions), or (model, method) for the method alone


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def _seconds(job: JobLike) -> float | None:
    if job.started_at is None or job.finished_at is None or job.total <= 0:
        return None
    spent = (_utc(job.finished_at) - _utc(job.started_at)).total_seconds()
    return spent if spent > 0 else None


def kind_of(job: JobLike) -> tuple[Kind, Kind]:
    """(the job's kind, its method's kind): what its patched runs cost depends on."""
    method = getattr(job, "method", None)
    component = positions = None
    try:
        spec = json.loads(getattr(job, "spec_json", None) or "{}")
        method = spec.get("method", method)
        component, positions = spec.get("component"), spec.get("positions")
    except (TypeError, ValueError, AttributeError):
        pass
    return (job.model_name, method, component, positions), (job.model_name, method)


def _rates(finished: Iterable[JobLike], key) -> dict:
    runs: dict = {}
    seconds: dict = {}
    for job in finished:
        spent = _seconds(job)
        if spent is None:
            continue
        for k in key(job):
            runs[k] = runs.get(k, 0.0) + job.total
            seconds[k] = seconds.get(k, 0.0) + spent
    return {k: runs[k] / max(seconds[k], MIN_SECONDS) for k in runs}


def model_rates(finished: Iterable[JobLike]) -> dict[str, float]:
    """Patched runs per second per model, over finished jobs of every kind (total runs / total seconds)."""
    return _rates(finished, lambda job: [job.model_name])


def kind_rates(finished: Iterable[JobLike]) -> dict[Kind, float]:
    """Patched runs per second per kind and per (model, method), over finished jobs (total runs / total seconds)."""
    return _rates(finished, kind_of)


def rate_for(job: JobLike, rates: dict[Kind, float]) -> float | None:
    """The measured rate of ``job``'s kind, else of its method, on its model (None: not measured)."""
    kind, method = kind_of(job)
    return rates.get(kind) or rates.get(method)


def own_rate(job: JobLike, now: dt.datetime) -> float | None:
    """A running job's throughput so far, once it has done some work for long enough to time."""
    if job.status != "running" or job.started_at is None or job.done <= 0:
        return None
    elapsed = (_utc(now) - _utc(job.started_at)).total_seconds()
    return job.done / elapsed if elapsed >= MIN_SECONDS else None


def steady_rate(job: JobLike, now: dt.datetime, since: tuple[dt.datetime, int] | None) -> float | None:
    """A running job's rate since its progress was first seen at ``since`` (when, done): after its
    setup, so its rate alone; None until ``STEADY_SECONDS`` of it have been seen."""
    if since is None or job.status != "running":
        return None
    first_seen, first_done = since
    span = (_utc(now) - _utc(first_seen)).total_seconds()
    return (job.done - first_done) / span if span >= STEADY_SECONDS and job.done > first_done else None


def estimate(job: JobLike, now: dt.datetime, model_rate: float | None, ahead: float = 0.0, *,
             wait: float = 0.0, since: tuple[dt.datetime, int] | None = None) -> Estimate:
    """Seconds left for ``job``, given its kind's measured rate ``model_rate``. A queued job also
    waits for ``ahead`` patched runs (at its rate) and ``wait`` seconds of work before it. ``since``:
    when (and at how many runs done) this running job's progress was first seen, if it was."""
    if job.status not in ("queued", "running"):
        return Estimate(None, None, None)
    mine = own_rate(job, now)
    if job.total <= 0:  # its size is not known yet
        rate = mine or model_rate
        return Estimate(rate, "this job" if mine else "model", None) if rate else Estimate(None, None, None)
    if job.status == "queued":  # it starts from nothing when a worker takes it (a requeued job too)
        if not model_rate:
            return Estimate(None, None, None)
        return Estimate(model_rate, "model", (job.total + ahead) / model_rate + wait)
    left = max(job.total - job.done, 0)
    steady = steady_rate(job, now, since)
    if steady:  # its own rate after its setup: the best measure there is
        return Estimate(steady, "this job", left / steady)
    if mine is None:
        return Estimate(model_rate, "model", left / model_rate) if model_rate else Estimate(None, None, None)
    if not model_rate and since is not None:  # being timed from its first report: its rate so far still carries its setup
        return Estimate(None, None, None)
    own_left = left / mine
    elapsed = (_utc(now) - _utc(job.started_at)).total_seconds() if job.started_at is not None else 0.0
    if not model_rate or elapsed >= job.total / model_rate:  # past its kind's prediction: its own rate decides
        return Estimate(mine, "this job", own_left)
    done = job.done / job.total  # its own rate so far still carries its setup: trusted as the work gets done
    seconds = (1 - done) * left / model_rate + done * own_left
    return Estimate(left / seconds if seconds > 0 else mine, "model, then this job", seconds)


def estimates(active: Sequence[JobLike], finished: Iterable[JobLike], now: dt.datetime,
              order: Sequence[str] | None = None,
              since: dict[str, tuple[dt.datetime, int]] | None = None) -> dict[str, Estimate]:
    """An estimate for each active job: running ones first, then queued ones in queue order (``order``:
    the queued jobs' ids as the queue will take them; default oldest first), each queued job waiting
    for the work still ahead of it on its model, timed at each job's kind's rate. ``since``: job id ->
    (when, done) its progress was first seen (``ProgressLog`` in the web layer)."""
    since = since or {}
    rates = kind_rates(finished)
    out: dict[str, Estimate] = {}
    wait: dict[str, float | None] = {}  # seconds of work ahead per model; None: some of it is not measured
    running = [j for j in active if j.status == "running"]
    queued = [j for j in active if j.status == "queued"]
    if order is None:
        queued.sort(key=lambda j: (_utc(j.created_at), j.id))
    else:
        rank = {job_id: i for i, job_id in enumerate(order)}
        queued.sort(key=lambda j: (rank.get(j.id, len(rank)), _utc(j.created_at), j.id))
    for job in running + queued:
        rate = rate_for(job, rates)
        ahead = wait.get(job.model_name, 0.0)
        if job.status == "queued" and ahead is None:  # waits behind work nobody has measured
            out[job.id] = Estimate(rate, "model" if rate else None, None)
        else:
            out[job.id] = estimate(job, now, rate, wait=ahead or 0.0, since=since.get(job.id))
        remaining = max(job.total - job.done, 0) if job.status == "running" else job.total
        if rate and job.total > 0:  # its own work, at its kind's rate, for those behind it
            work: float | None = remaining / rate
        else:
            work = out[job.id].seconds_left if job.status == "running" else None
        wait[job.model_name] = None if ahead is None or work is None else ahead + work
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
