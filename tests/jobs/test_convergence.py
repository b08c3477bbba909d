"""Job state that converges (issue 21, findings 1, 3, 6, 7): on SQLite and PostgreSQL, a running job
whose worker went silent is requeued, cancelled or failed, never left running; asking again or
cancelling settles it at once; a job's last write is retried through an outage; a job thread
survives anything a job does; the queue is fair across clients, with caps per address and a
global bound; a jobs table of an older version gets the new columns."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, create_engine, update
from sqlalchemy.exc import OperationalError

from helpers import TINY_PAIRS
from patchstudio.jobs.local import LocalQueue
from patchstudio.jobs.runner import execute
from patchstudio.jobs.store import Client, JobStore, QueueFull, TooManyJobs, jobs
from patchstudio.specs import parse_spec
from patchstudio.store import Store
from procs import wait_for


def spec(n: int = 1, component: str = "head"):
    """A distinct experiment per (n, component): n copies of the first tiny pair."""
    return parse_spec({"prompts": [TINY_PAIRS[0]] * n, "component": component})


def silence(store: JobStore, job_id: str) -> None:
    """The job's worker stopped beating an hour ago (killed, or its writes failed)."""
    with store.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(heartbeat_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)))


def outage(message: str = "server closed the connection unexpectedly") -> OperationalError:
    return OperationalError("UPDATE jobs ...", {}, Exception(message))


def test_a_silent_job_is_requeued_then_ended_after_its_attempts_and_can_be_asked_for_again(store):
    store.max_attempts = 2
    job, _ = store.submit(spec(), "c:me")
    assert store.claim(job.id, "w1") == 1
    assert store.requeue_stale() == []  # beating: left alone
    silence(store, job.id)
    assert store.requeue_stale() == [job.id]
    assert store.get(job.id).status == "queued"
    assert store.claim(job.id, "w2") == 2
    silence(store, job.id)
    assert store.requeue_stale() == []  # the second silent attempt ends it
    ended = store.get(job.id)
    assert ended.status == "error" and "stopped 2 times" in ended.error and ended.finished_at is not None
    assert store.active_count("c:me") == 0  # no longer held against its submitter's cap
    again, created = store.submit(spec(), "c:me")
    assert created and again.status == "queued"


def test_cancelling_a_silent_job_ends_it_at_once_and_a_flagged_one_ends_when_found_silent(store):
    stuck, _ = store.submit(spec(1), "c:me")
    attempt = store.claim(stuck.id, "w")
    silence(store, stuck.id)
    assert store.cancel(stuck.id).status == "cancelled"  # nobody would ever read the flag
    assert store.progress(stuck.id, attempt, 1, 2) == "lost"  # were its worker still alive, it stops
    flagged, _ = store.submit(spec(2), "c:me")
    store.claim(flagged.id, "w")
    assert store.cancel(flagged.id).status == "running"  # alive: it stops at its next report
    silence(store, flagged.id)
    assert store.requeue_stale() == [] and store.get(flagged.id).status == "cancelled"


def test_asking_again_for_a_stuck_job_starts_it_again(store):
    job, _ = store.submit(spec(), "c:me")
    first = store.claim(job.id, "w1")
    joined, created = store.submit(spec(), "c:other")
    assert not created and joined.status == "running"  # alive: joined as it is
    silence(store, job.id)
    again, created = store.submit(spec(), "c:other")
    assert not created and again.status == "queued" and again.attempts == 1
    assert store.claim(job.id, "w2") == first + 1


def test_a_flood_from_one_client_cannot_starve_another_clients_job(store):
    """30 jobs from one client, then one from another: the other's is taken right after the jobs
    already running (here, the flood's first): the bound is one job per worker, not 30."""
    flood = [store.submit(spec(n), "c:flood")[0] for n in range(1, 31)]
    assert store.claim_next(["default"], "w")[0] == flood[0].id  # a worker is busy with the first
    small, _ = store.submit(spec(1, "mlp_out"), "c:small")
    assert store.claim_next(["default"], "w")[0] == small.id
    assert [store.claim_next(["default"], "w")[0] for _ in range(3)] == [j.id for j in flood[1:4]]  # then the flood, in order


def test_new_cookies_from_one_address_do_not_multiply_its_place_or_its_cap(store):
    """A script that makes up a cookie per request is one address: its jobs queue behind each
    other (priority by address), and its address has a cap."""
    flood = [store.submit(spec(n), Client(f"c:fresh{n}", "10.0.0.1"), max_active=8, max_per_address=5)[0] for n in range(1, 6)]
    with pytest.raises(TooManyJobs, match="from your address .* limit is 5") as refused:
        store.submit(spec(6), Client("c:fresh6", "10.0.0.1"), max_active=8, max_per_address=5)
    assert refused.value.status == 429
    store.claim_next(["default"], "w")
    victim, _ = store.submit(spec(1, "mlp_out"), Client("c:victim", "10.0.0.2"), max_active=8, max_per_address=5)
    assert store.claim_next(["default"], "w")[0] == victim.id
    assert [j.id for j in store.by_status(["queued"])] == [j.id for j in flood[1:]]


def test_the_whole_queue_is_bounded(store):
    for n in range(1, 4):
        store.submit(spec(n), f"c:{n}", max_queued=3)
    with pytest.raises(QueueFull, match="the job queue is full: 3 background jobs are waiting") as refused:
        store.submit(spec(4), "c:4", max_queued=3)
    assert refused.value.status == 503
    store.claim_next(["default"], "w")  # one runs: a place is free again
    store.submit(spec(4), "c:4", max_queued=3)


def test_an_older_jobs_table_gets_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path}/old.sqlite3"
    old = MetaData()
    Table("jobs", old, Column("id", String(32), primary_key=True), Column("spec_json", Text, nullable=False),
          Column("method", String(32), nullable=False), Column("model_name", String(200), nullable=False),
          Column("status", String(16), nullable=False), Column("done", Integer, nullable=False),
          Column("total", Integer, nullable=False), Column("error", Text), Column("client", String(128), nullable=False),
          Column("cancel_requested", Integer, nullable=False), Column("attempts", Integer, nullable=False),
          Column("worker", String(200)), Column("queue_job_id", Integer),
          *[Column(name, DateTime(timezone=True)) for name in ("created_at", "started_at", "finished_at", "heartbeat_at")])
    engine = create_engine(url)
    old.create_all(engine)
    s = spec()
    with engine.begin() as conn:
        conn.execute(old.tables["jobs"].insert().values(id=s.id, spec_json=s.canonical_json(), method=s.method, model_name="default",
                                                        status="queued", done=0, total=0, client="c:me", cancel_requested=False,
                                                        attempts=0, created_at=dt.datetime.now(dt.timezone.utc)))
    engine.dispose()
    store = JobStore(Store(url))
    assert store.get(s.id).priority is None and store.claim_next(["default"], "w") == (s.id, 1)
    fresh, _ = store.submit(spec(2), Client("c:me", "127.0.0.1"))
    assert fresh.address == "127.0.0.1" and fresh.priority == -1000  # its client has one job running already


# --- one attempt through an outage (runner.execute) ---------------------------------------------------------


def failing(method, times: int, error=outage):
    """``method``, failing with ``error()`` for its first ``times`` calls."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= times:
            raise error()
        return method(*args, **kwargs)

    wrapped.calls = calls
    return wrapped


def test_a_jobs_last_write_and_its_progress_go_through_an_outage(store):
    job, _ = store.submit(spec(), "c:me")
    attempt = store.claim(job.id, "w")
    store.finish = failing(store.finish, 3)  # the database is gone for three tries
    store.progress = failing(store.progress, 2)

    def run_spec(s, progress):
        for i in range(4):
            progress(i, 4)  # the first two reports fail and are skipped; the sweep goes on
        progress(4, 4)

    assert execute(store, run_spec, job.id, attempt, report_seconds=0) == "done"
    assert store.finish.calls["n"] == 4 and store.get(job.id).status == "done"
    assert store.get(job.id).done == 4


def test_a_job_that_cannot_store_its_result_goes_back_to_the_queue_then_ends_with_a_reason(store):
    store.max_attempts = 2
    job, _ = store.submit(spec(), "c:me")

    def run_spec(s, progress):
        raise outage("database or disk is full")

    assert execute(store, run_spec, job.id, store.claim(job.id, "w")) == "released"
    assert store.get(job.id).status == "queued"
    assert execute(store, run_spec, job.id, store.claim(job.id, "w")) == "error"
    ended = store.get(job.id)
    assert ended.status == "error" and "database was unavailable" in ended.error and "2 attempts" in ended.error


def test_a_last_write_that_fails_past_its_deadline_is_settled_by_the_sweep(store):
    job, _ = store.submit(spec(), "c:me")
    attempt = store.claim(job.id, "w")
    finish = store.finish
    store.finish = failing(finish, 10_000)
    assert execute(store, lambda s, p: None, job.id, attempt, write_seconds=0.5) == "unwritten"
    assert store.get(job.id).status == "running"  # its worker gave up; its heartbeat stops
    silence(store, job.id)
    store.finish = finish
    assert store.requeue_stale() == [job.id]
    assert execute(store, lambda s, p: None, job.id, store.claim(job.id, "w2")) == "done"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_job_thread_survives_any_job_and_a_dead_one_is_started_again(tmp_path):
    """SQLite's worker threads (finding 3): a job whose run escapes every handler (here SystemExit,
    which ends a thread) neither leaves its job running nor stops the queue."""
    store = JobStore(Store(f"sqlite:///{tmp_path}/q.sqlite3"))
    ran, first = [], threading.Event()

    def run_spec(s, progress):
        if not first.is_set():
            first.set()
            raise SystemExit  # ends the worker thread
        ran.append(s.id)

    queue = LocalQueue(store, run_spec, ["default"], workers=1, heartbeat_seconds=0.2, stale_seconds=1, poll_seconds=0.05)
    queue.start()
    try:
        killer = queue.submit(spec(1), "c:me")
        wait_for(first.is_set, 30, "the first job to start")
        later = queue.submit(spec(2), "c:me")
        wait_for(lambda: store.get(later.id).status == "done", 60, "the next job, on a restarted thread")
        wait_for(lambda: store.get(killer.id).status == "done", 60, "the killed job, requeued once silent")
        assert store.get(killer.id).attempts == 2 and set(ran) == {killer.id, later.id}
        assert all(t.is_alive() for t in queue._workers)
    finally:
        queue.shutdown()


def test_a_running_job_that_beats_is_never_claimed_again(store):
    """Only a silent running job may be claimed by another ticket (a duplicate, or a stalled
    retry): one that beats keeps its attempt."""
    job, _ = store.submit(spec(), "c:me")
    assert store.claim(job.id, "w1") == 1
    assert store.claim(job.id, "w2", statuses=("queued", "running")) is None
    silence(store, job.id)
    assert store.claim(job.id, "w2", statuses=("queued", "running")) == 2


def test_a_queued_job_whose_ticket_is_stuck_doing_gets_a_new_one(store):
    """PostgreSQL (the outage test's job that never ended): a worker ran its ticket to an end (it put
    the row back in the queue) but could not record the ticket's end while the database was down,
    and lived on, its Procrastinate heartbeat fresh: the ticket stays "doing" and no stalled-ticket
    retry frees it. The reconciler gives such a row a new ticket once the ticket has been doing for
    the stale time without claiming it; one that started a moment ago is left to claim its row."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("Procrastinate tickets exist on PostgreSQL only")
    from sqlalchemy import text

    from patchstudio.jobs.pg import ProcrastinateQueue

    queue = ProcrastinateQueue(store, lambda s, p: None, ["default"], stale_seconds=3600)  # its own loop never ticks here
    queue.start()
    try:
        job = queue.submit(spec(), "c:me")

        def tickets() -> list[str]:
            with store.engine.connect() as conn:
                return sorted(conn.execute(text("SELECT status::text FROM procrastinate_jobs WHERE queueing_lock = :id"),
                                           {"id": job.id}).scalars())

        with store.engine.begin() as conn:  # a worker fetched the ticket (Procrastinate records 'started')
            conn.execute(text("UPDATE procrastinate_jobs SET status = 'doing' WHERE queueing_lock = :id"), {"id": job.id})
            conn.execute(update(jobs).where(jobs.c.id == job.id)
                         .values(created_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)))
        queue.reconcile()
        assert tickets() == ["doing"]  # started a moment ago: it is about to claim its row
        with store.engine.begin() as conn:  # ... two hours ago, and the row is still queued: it never will
            conn.execute(text("UPDATE procrastinate_events SET at = NOW() - INTERVAL '2 hours' WHERE type = 'started'"))
        queue.reconcile()
        assert tickets() == ["doing", "todo"]
        queue.reconcile()
        assert tickets() == ["doing", "todo"]  # one new ticket, not one per pass
    finally:
        queue.shutdown()
