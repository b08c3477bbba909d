"""The jobs table's transitions on SQLite and PostgreSQL: one claim wins, writes are fenced by the
attempt, cancel and stale requeue, the per-client cap, and the local queue end to end."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from helpers import TINY_PAIRS
from patchstudio.jobs.local import LocalQueue
from patchstudio.jobs.store import JobStore, TooManyJobs
from patchstudio.specs import parse_spec
from patchstudio.store import Store


def spec(component: str = "head"):
    return parse_spec({"prompts": TINY_PAIRS, "component": component})


def test_one_claim_wins_and_writes_are_fenced_by_the_attempt(store):
    job, created = store.submit(spec(), "c:me")
    assert created and job.status == "queued" and job.attempts == 0
    again, created = store.submit(spec(), "c:other")
    assert not created and again.id == job.id  # the same experiment joins its job

    winners = []
    barrier = threading.Barrier(4)

    def claim():
        barrier.wait()
        winners.append(store.claim_next(["default"], f"w{threading.get_ident()}"))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [w for w in winners if w is not None]
    assert claimed == [(job.id, 1)]
    assert store.progress(job.id, 1, 3, 10) == "ok"
    assert store.get(job.id).done == 3

    # the worker stops beating; the job is requeued and claimed again: attempt 1 can no longer write
    assert store.requeue_stale(dt.timedelta(seconds=0)) == [job.id]
    assert store.claim(job.id, "w2") == 2
    assert store.progress(job.id, 1, 9, 10) == "lost"
    assert not store.finish(job.id, 1, "done")
    assert store.finish(job.id, 2, "done")
    assert store.get(job.id).status == "done" and not store.finish(job.id, 2, "error", "late")


def test_cancel_a_queued_job_at_once_and_a_running_one_at_its_next_report(store):
    queued, _ = store.submit(spec("head"), "c:me")
    assert store.cancel(queued.id).status == "cancelled"
    assert store.claim(queued.id, "w") is None
    running, _ = store.submit(spec("mlp_out"), "c:me")
    attempt = store.claim(running.id, "w")
    assert store.cancel(running.id).status == "running"
    assert store.progress(running.id, attempt, 1, 2) == "cancel"
    assert store.finish(running.id, attempt, "cancelled")
    again, created = store.submit(spec("mlp_out"), "c:me")  # a cancelled experiment can be asked for again
    assert created and again.status == "queued" and not again.cancel_requested


def test_per_client_cap(store):
    store.submit(spec("head"), "c:me", max_active=2)
    store.submit(spec("mlp_out"), "c:me", max_active=2)
    with pytest.raises(TooManyJobs, match="limit is 2"):
        store.submit(spec("attn_out"), "c:me", max_active=2)
    store.submit(spec("head"), "c:me", max_active=2)  # joining an existing job is not a new one
    store.submit(spec("attn_out"), "c:you", max_active=2)


def test_local_queue_runs_jobs_and_cancels_them(tmp_path, tiny_model):
    from patchstudio.engine.run import run

    store = JobStore(Store(f"sqlite:///{tmp_path}/q.sqlite3"))
    stored = {}

    def run_spec(s, progress):
        if s.component == "pattern":  # a job that waits to be cancelled
            for i in range(200):
                progress(i, 200)
                time.sleep(0.02)
        result = run(tiny_model, s)
        stored[s.id] = result
        return result

    queue = LocalQueue(store, run_spec, ["default"], heartbeat_seconds=0.2, stale_seconds=5, poll_seconds=0.05)
    queue.start()
    try:
        done = queue.submit(spec("head"), "c:me")
        slow = queue.submit(spec("pattern"), "c:me")
        deadline = time.monotonic() + 30
        while store.get(slow.id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        asked = time.monotonic()
        queue.cancel(slow.id)
        while store.get(slow.id).status == "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.get(slow.id).status == "cancelled" and time.monotonic() - asked < 2
        assert store.get(done.id).status == "done" and done.id in stored
    finally:
        queue.shutdown()


def test_jobs_list_by_status_with_their_size_and_finished_ones_for_throughput(store):
    first, _ = store.submit(spec("head"), "c:me", total=120)
    second, _ = store.submit(spec("attn_out"), "c:me", total=30)
    third, _ = store.submit(spec("mlp_out"), "c:you")
    assert (first.total, third.total) == (120, 0)  # priced by the caller, or unknown until a worker reports
    # the order workers take them: each client's first job before anyone's second (fairness, issue 21)
    assert [j.id for j in store.by_status(["queued"])] == [first.id, third.id, second.id]
    attempt = store.claim(first.id, "w")
    store.progress(first.id, attempt, 120, 120)
    store.finish(first.id, attempt, "done")
    store.cancel(second.id)
    assert [j.id for j in store.by_status(["running", "queued"])] == [third.id]
    assert {j.id for j in store.by_status(["done", "error", "cancelled"])} == {first.id, second.id}
    assert [j.id for j in store.finished(["default"])] == [first.id]
    assert store.finished(["other"]) == []
