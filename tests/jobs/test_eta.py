"""Time left from measured throughput: the rate of the job's kind on its model from the first second
(queued or running), its own rate taking over as it runs; a queued job waits for the work ahead of it
on its model; nothing measured, no estimate. Expected values are hand arithmetic on the rows."""

from __future__ import annotations

import datetime as dt
import json
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
    method: str | None = None
    spec_json: str = ""


def kind(method: str, component: str | None = None, positions: str | None = None) -> dict:
    """A job's method and spec JSON, as the jobs table holds them."""
    spec = {"method": method, **({"component": component} if component else {}), **({"positions": positions} if positions else {})}
    return {"method": method, "spec_json": json.dumps(spec)}


HEADS_EACH = kind("activation_patching", "head", "each")
PATHS = kind("path_patching", "head")


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


def test_each_kind_of_job_is_timed_by_its_own_kinds_rate():
    """A path-patching job's slow patched runs no longer price a head sweep (measured: after one, a
    30,720-run sweep said about 4 min and took 11 s)."""
    finished = [Job("p", "done", 2048, 2048, started_at=at(0), finished_at=at(16), **PATHS),  # 128 runs/s
                Job("h", "done", 3840, 3840, started_at=at(20), finished_at=at(22), **HEADS_EACH)]  # 1,920 runs/s
    big = Job("big", "queued", 0, 30720, created_at=at(30), **HEADS_EACH)
    got = eta.estimates([big], finished, at(31))["big"]
    assert got.basis == "model" and got.rate == pytest.approx(3840 / 2)
    assert got.seconds_left == pytest.approx(30720 / 1920)  # 16 s, not 30720 / ((2048 + 3840) / 18) = 94 s


def test_an_unmeasured_kind_falls_back_to_its_method_then_to_nothing():
    finished = [Job("h", "done", 3840, 3840, started_at=at(0), finished_at=at(2), **HEADS_EACH)]
    resid = Job("r", "queued", 0, 960, **kind("activation_patching", "resid_pre", "each"))
    paths = Job("p", "queued", 0, 512, model_name="other", **PATHS)
    got = eta.estimates([resid, paths], finished, at(5))
    assert got["r"].seconds_left == pytest.approx(960 / 1920)  # activation patching's rate on this model
    assert got["p"] == eta.Estimate(None, None, None)  # nothing of its method measured: no guess


@pytest.mark.parametrize("age", [0.0, 100.0, 10_000.0])
@pytest.mark.parametrize("done, started", [(0, None), (4000, -50.0)])
def test_a_queued_jobs_time_left_does_not_run_from_its_creation(age, done, started):
    """A queued job is timed by its size at its kind's rate, whenever it was created; a requeued job
    (done > 0 from an attempt whose worker stopped) starts over, so all of it is left."""
    finished = [Job("h", "done", 3840, 3840, started_at=at(-40), finished_at=at(-38), **HEADS_EACH)]  # 1,920 runs/s
    job = Job("q", "queued", done, 19200, created_at=at(-age), started_at=at(started) if started is not None else None,
              **HEADS_EACH)
    got = eta.estimates([job], finished, at(0))["q"]
    assert (got.basis, got.seconds_left) == ("model", pytest.approx(19200 / 1920))


def test_a_running_jobs_setup_does_not_inflate_its_time_left():
    """Two seconds in, the first 160 of 19,200 runs done: its own rate (80 runs/s, setup included)
    would say 238 s; its kind's rate says 9.9 s, and the own rate weighs in by the fraction done."""
    finished = [Job("h", "done", 3840, 3840, started_at=at(-40), finished_at=at(-38), **HEADS_EACH)]
    job = Job("r", "running", 160, 19200, started_at=at(0), **HEADS_EACH)
    got = eta.estimates([job], finished, at(2))["r"]
    left, done = 19200 - 160, 160 / 19200
    expected = (1 - done) * left / 1920 + done * left / (160 / 2)
    assert got.basis == "model, then this job" and got.seconds_left == pytest.approx(expected)
    assert got.seconds_left < 12
    # once it has run longer than its kind predicts (10 s), its own rate alone decides
    late = Job("r", "running", 9600, 19200, started_at=at(0), **HEADS_EACH)
    got = eta.estimates([late], finished, at(12))["r"]
    assert (got.basis, got.seconds_left) == ("this job", pytest.approx(9600 / (9600 / 12)))


def test_the_queue_order_can_be_given():
    """A fair queue may take jobs out of creation order: each waits for those the queue takes first."""
    finished = [Job("f", "done", 100, 100, started_at=at(-20), finished_at=at(-10))]  # 10 runs/s
    active = [Job("a", "queued", 0, 50, created_at=at(1)), Job("b", "queued", 0, 30, created_at=at(2))]
    got = eta.estimates(active, finished, at(10), order=["b", "a"])
    assert got["b"].seconds_left == pytest.approx(3.0) and got["a"].seconds_left == pytest.approx(3.0 + 5.0)


def test_work_ahead_that_nobody_measured_leaves_a_queued_job_without_an_estimate():
    finished = [Job("h", "done", 3840, 3840, started_at=at(-40), finished_at=at(-38), **HEADS_EACH)]
    active = [Job("p", "running", 0, 512, started_at=at(0), **PATHS),  # no path-patching job has finished
              Job("q", "queued", 0, 3840, created_at=at(1), **HEADS_EACH)]
    got = eta.estimates(active, finished, at(3))
    assert got["p"].seconds_left is None
    assert got["q"].seconds_left is None and got["q"].rate == pytest.approx(1920)


def test_a_running_job_seen_for_a_second_is_timed_by_its_rate_since_then():
    """Seen first at 2 s with 160 done, at 4 s with 4,000: 1,920 runs/s after its setup, whatever its
    kind's history (none here)."""
    job = Job("r", "running", 4000, 19200, started_at=at(0), **PATHS)
    got = eta.estimates([job], [], at(4), since={"r": (at(2), 160)})["r"]
    assert (got.basis, got.rate, got.seconds_left) == ("this job", pytest.approx(1920), pytest.approx(15200 / 1920))
    # seen for under a second, and nothing of its kind measured: its rate so far carries its setup, no estimate yet
    early = eta.estimates([job], [], at(2.5), since={"r": (at(2), 160)})["r"]
    assert early == eta.Estimate(None, None, None)
