"""Time left from measured throughput: a running job's own rate, else the model's recent rate; a
queued job waits for the work ahead of it on its model; nothing measured, no estimate."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from patchstudio.jobs import eta

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


@dataclass
class Job:
    id: str
    status: str
    done: int = 0
    total: int = 0
    model_name: str = "default"
    created_at: dt.datetime = T0
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_model_rate_is_total_runs_over_total_seconds():
    finished = [Job("a", "done", 100, 100, started_at=at(0), finished_at=at(10)),
                Job("b", "done", 300, 300, started_at=at(20), finished_at=at(30)),
                Job("c", "done", 50, 50, model_name="other", started_at=at(0), finished_at=at(5)),
                Job("d", "done", 0, 0, started_at=at(0), finished_at=at(5))]  # size unknown: ignored
    assert eta.model_rates(finished) == {"default": pytest.approx(20.0), "other": pytest.approx(10.0)}


@pytest.mark.parametrize(
    "job, model_rate, rate, basis, left",
    [
        (Job("r", "running", 30, 90, started_at=at(0)), 100.0, 3.0, "this job", 20.0),  # own rate wins
        (Job("r", "running", 0, 90, started_at=at(0)), 9.0, 9.0, "model", 10.0),  # nothing done yet
        (Job("r", "running", 0, 90, started_at=at(0)), None, None, None, None),  # nothing measured
        (Job("q", "queued", 0, 40), 4.0, 4.0, "model", 10.0),
        (Job("q", "queued", 0, 0), 4.0, 4.0, "model", None),  # size not known yet
        (Job("d", "done", 90, 90, started_at=at(0), finished_at=at(5)), 4.0, None, None, None),
    ],
)
def test_estimate(job, model_rate, rate, basis, left):
    got = eta.estimate(job, at(10), model_rate)
    assert (got.rate, got.basis, got.seconds_left) == (pytest.approx(rate) if rate else rate, basis,
                                                       pytest.approx(left) if left else left)


def test_queued_jobs_wait_for_the_work_ahead_on_their_model():
    finished = [Job("f", "done", 100, 100, started_at=at(-20), finished_at=at(-10))]  # 10 runs/s
    active = [Job("q2", "queued", 0, 50, created_at=at(2)),
              Job("r", "running", 20, 100, started_at=at(0)),  # 2 runs/s so far: 40 s left
              Job("q1", "queued", 0, 30, created_at=at(1)),
              Job("x", "queued", 0, 30, model_name="other", created_at=at(0))]  # no rate for its model
    got = eta.estimates(active, finished, at(10))
    assert got["r"].seconds_left == pytest.approx(40.0)
    assert got["q1"].seconds_left == pytest.approx((80 + 30) / 10)  # the running job's 80 left, then its 30
    assert got["q2"].seconds_left == pytest.approx((80 + 30 + 50) / 10)
    assert got["x"].seconds_left is None and got["x"].basis is None


@pytest.mark.parametrize("seconds, text", [(None, ""), (0.2, "about 1 s"), (42.4, "about 42 s"), (61, "about 1 min"),
                                           (3 * 3600 + 5 * 60, "about 3 h 5 min")])
def test_words(seconds, text):
    assert eta.words(seconds) == text
