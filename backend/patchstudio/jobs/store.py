"""The jobs table and its state machine: the durable state of background sweeps, in the same
database as the run records (the run store's engine and metadata).

A job row (id = the spec's id) holds its status, progress, a user-safe error, who asked (a client
key: only it may cancel; and its address), its place in the queue (``priority``), the computation
its server asked for (weights and dtype), and a heartbeat and attempt count for whichever worker runs it:

    submit          new, error, cancelled -> queued (a queued, running or done job is joined as it
                    is; a running one whose heartbeat stopped is reconciled first, so it runs again)
    claim           queued -> running, attempt + 1      cancel    queued -> cancelled; running: flagged
    progress        running -> running (+ heartbeat)    finish    running -> done, error or cancelled
    release         running -> queued (its worker is stopping)
    requeue_stale   running, silent for ``stale_seconds`` -> queued (its worker died or lost the
                    database), or cancelled (asked for), or error (after ``max_attempts`` attempts)

Every state change is one conditional UPDATE, so two workers (threads, processes or machines) on
the same database can never both claim a job, and a worker that lost its job (declared stale, then
rerun elsewhere) can no longer write to it: its writes are fenced by the attempt number it claimed.
``requeue_stale`` is run by every worker and every web process: a job whose attempt stopped
heart-beating (kill -9, a lost machine, an outage that failed its last write) never stays running.

Fairness: a job's priority is fixed when it is queued, from how many jobs of the same model its
client (and, next, its address) already has queued or running: a client's first job goes before
any client's second, so a flood from one client delays another client's job by at most the jobs
already running. Workers take the highest priority first, the oldest among equals (both stores:
``claim_next`` here, Procrastinate's own order on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text, and_, func, literal, or_, select, update

from patchstudio.store import Store, metadata, usable_key, utcnow

log = logging.getLogger("patchstudio.jobs")

ACTIVE = ("queued", "running")

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),  # the spec's id: one job per experiment
    Column("spec_json", Text, nullable=False),
    Column("method", String(32), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("status", String(16), nullable=False),  # queued, running, done, error, cancelled
    Column("done", Integer, nullable=False, default=0),
    Column("total", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),  # user-safe: never a traceback
    Column("client", String(128), nullable=False, default=""),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),  # also the fencing token of the running attempt
    Column("worker", String(200), nullable=True),
    Column("queue_job_id", BigInteger, nullable=True),  # the queue library's own id (PostgreSQL)
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    # added after the table first shipped (Store.create_tables adds them to an older table): nullable
    Column("address", String(64), nullable=True),  # the submitter's address: the per-address cap and fairness
    Column("priority", Integer, nullable=True),  # higher runs first; see the module docstring
    Column("computation", String(120), nullable=True),  # "<dtype>:<weights sha256>" the submitting server runs
    Index("ix_jobs_status_model", "status", "model_name"),
    Index("ix_jobs_client_status", "client", "status"),
)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)).isoformat()  # SQLite: naive UTC


class JobRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    spec_json: str
    method: str
    model_name: str
    status: str
    done: int
    total: int
    error: str | None
    client: str
    cancel_requested: bool
    attempts: int
    worker: str | None
    queue_job_id: int | None
    address: str | None = None
    priority: int | None = None
    computation: str | None = None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    heartbeat_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def as_dict(self) -> dict[str, Any]:
        """What a client may see: no worker names, no client keys."""
        return {
            "id": self.id,
            "status": self.status,
            "done": self.done,
            "total": self.total,
            "error": self.error,
            "model": self.model_name,
            "method": self.method,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


class Client(str):
    """Who asks for a job: its key (a session cookie's, or an address) is the string, stored and
    compared as such; ``address`` is where the request came from (the per-address cap, fairness)."""

    address: str | None

    def __new__(cls, key: str, address: str | None = None) -> "Client":
        made = super().__new__(cls, key)
        made.address = address
        return made


class TooManyJobs(Exception):
    """A client (or its address) already has its cap of queued and running jobs: 429."""

    status = 429

    def __init__(self, active: int, limit: int, who: str = "you"):
        if who == "you":
            message = (f"you already have {active} background job(s) queued or running (the limit is {limit}); "
                       "wait for one to finish or cancel one")
        else:
            message = (f"{active} background jobs from {who} are queued or running (the limit is {limit} per {who}); "
                       "wait for one to finish or cancel one")
        super().__init__(message)
        self.active, self.limit = active, limit


class QueueFull(TooManyJobs):
    """The server's queue holds its bound of waiting jobs: 503, for everyone, until it drains."""

    status = 503

    def __init__(self, queued: int, limit: int):
        Exception.__init__(self, f"the job queue is full: {queued} background jobs are waiting (this server takes at "
                                 f"most {limit}, PATCHSTUDIO_MAX_QUEUED_JOBS); try again in a minute")
        self.active, self.limit = queued, limit


ADDRESS_SPAN = 1_000  # priority = -(client's jobs ahead * ADDRESS_SPAN + address's jobs ahead)


def _attempt(job_id: str, attempt: int) -> tuple:
    """The row while ``attempt`` runs it: a worker's every write is conditioned on this (the fence)."""
    return jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running"


def _ahead(where: Any) -> Any:
    return select(func.count()).select_from(jobs).where(jobs.c.status.in_(ACTIVE), where).scalar_subquery()


class JobStore:
    """The jobs of one database: reads for pages, transitions for the web side and the workers.

    ``stale_seconds``: a running job whose heartbeat is older is taken to have lost its worker.
    ``max_attempts``: a job whose worker died this many times ends as an error (a sweep that kills
    its worker each time, by memory say, must not loop forever)."""

    def __init__(self, db: Store, *, stale_seconds: float = 30.0, max_attempts: int = 3):
        self.db = db  # the run store: engine, URL, table creation and insert-once, shared
        self.engine = db.engine
        self.stale = dt.timedelta(seconds=stale_seconds)
        self.max_attempts = max_attempts
        db.create_tables([jobs])

    def _update(self, *where: Any, **values: Any) -> int:
        """One conditional UPDATE; the number of rows it changed (0: the condition no longer held)."""
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(*where).values(**values)).rowcount

    def _rows(self, query) -> list[JobRow]:
        with self.engine.connect() as conn:
            return [JobRow(**row) for row in conn.execute(query).mappings().all()]

    def _silent(self) -> Any:
        """Running rows whose attempt stopped heart-beating."""
        return jobs.c.status == "running", or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < utcnow() - self.stale)

    # --- reads -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        if not usable_key(job_id):
            return None
        found = self._rows(select(jobs).where(jobs.c.id == job_id))
        return found[0] if found else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRow]:
        ids = [i for i in job_ids if usable_key(i)]
        return {row.id: row for row in self._rows(select(jobs).where(jobs.c.id.in_(ids)))} if ids else {}

    def active_count(self, client: str) -> int:
        query = select(func.count()).select_from(jobs).where(jobs.c.client == client, jobs.c.status.in_(ACTIVE))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def _counts(self, client: str, address: str | None) -> tuple[int, int, int]:
        """(the client's active jobs, its address's, every queued job)."""
        query = select(_ahead(jobs.c.client == client),
                       _ahead(jobs.c.address == address) if address else literal(0),
                       select(func.count()).select_from(jobs).where(jobs.c.status == "queued").scalar_subquery())
        with self.engine.connect() as conn:
            return tuple(conn.execute(query).one())  # type: ignore[return-value]

    def _priority(self, model: str, client: str, address: str | None) -> int:
        """Minus the jobs of ``model`` this client (then this address) has queued or running: a
        client's first job goes before anyone's second (see the module docstring)."""
        same_model = jobs.c.model_name == model
        query = select(_ahead(same_model & (jobs.c.client == client)),
                       _ahead(same_model & (jobs.c.address == address)) if address else literal(0))
        with self.engine.connect() as conn:
            by_client, by_address = conn.execute(query).one()
        return -(by_client * ADDRESS_SPAN + min(by_address, ADDRESS_SPAN - 1))

    def by_status(self, statuses: Iterable[str], limit: int = 50) -> list[JobRow]:
        """Jobs in ``statuses``: queued ones in the order workers take them, others newest first."""
        statuses = list(statuses)
        order = [func.coalesce(jobs.c.priority, 0).desc(), jobs.c.created_at, jobs.c.id] if statuses == ["queued"] else [
            func.coalesce(jobs.c.finished_at, jobs.c.started_at, jobs.c.created_at).desc(), jobs.c.id]
        return self._rows(select(jobs).where(jobs.c.status.in_(statuses)).order_by(*order).limit(limit))

    def finished(self, models: Iterable[str], limit: int = 20) -> list[JobRow]:
        """The newest finished (done) jobs of these models: what their measured throughput comes from."""
        return self._rows(select(jobs).where(jobs.c.status == "done", jobs.c.model_name.in_(list(models)),
                                             jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None), jobs.c.total > 0)
                          .order_by(jobs.c.finished_at.desc()).limit(limit))

    # --- the web side ----------------------------------------------------------------------------

    def submit(self, spec: Any, client: str, max_active: int | None = None, total: int = 0, *,
               max_per_address: int | None = None, max_queued: int | None = None,
               computation: str | None = None) -> tuple[JobRow, bool]:
        """The job for ``spec``: the existing one while it is queued, running or done (the same
        experiment twice joins it), else a new queued one. Returns (job, created). Raises
        TooManyJobs when creating one would put ``client`` over ``max_active`` active jobs (or its
        address over ``max_per_address``), QueueFull when ``max_queued`` jobs wait already.
        ``total``: the patched runs it needs, when the caller priced it (a queued job then shows
        its size and an estimate before a worker takes it; the worker's reports replace it).
        ``computation``: what the submitting server's model computes ("<dtype>:<weights hash>");
        a worker whose model differs refuses the job. A running job whose worker went silent is
        requeued first (``requeue_stale``), so asking again starts a stuck experiment again."""
        existing = self.get(spec.id)
        if existing is not None and existing.status == "running" and self.requeue_stale(ids=[spec.id]):
            existing = self.get(spec.id)
        if existing is not None and existing.status in (*ACTIVE, "done"):
            return existing, False
        address = getattr(client, "address", None)
        by_client, by_address, queued = self._counts(client, address)
        if max_active is not None and by_client >= max_active:
            raise TooManyJobs(by_client, max_active)
        if max_per_address is not None and address and by_address >= max_per_address:
            raise TooManyJobs(by_address, max_per_address, "your address")
        if max_queued is not None and queued >= max_queued:
            raise QueueFull(queued, max_queued)
        fresh = {"status": "queued", "done": 0, "total": total, "error": None, "client": str(client), "address": address,
                 "priority": self._priority(spec.model, client, address), "computation": computation,
                 "cancel_requested": False, "worker": None, "queue_job_id": None, "created_at": utcnow(),
                 "started_at": None, "finished_at": None, "heartbeat_at": None}
        if existing is not None:  # an errored or cancelled job runs again on request
            created = self._update(jobs.c.id == spec.id, jobs.c.status.in_(("error", "cancelled")), **fresh) == 1
        else:  # False: another request created it first, and this one joins it
            created = self.db.insert_once(jobs, id=spec.id, spec_json=spec.canonical_json(), method=spec.method,
                                          model_name=spec.model, attempts=0, **fresh)
        job = self.get(spec.id)
        assert job is not None
        return job, created

    def set_queue_job_id(self, job_id: str, queue_job_id: int) -> None:
        self._update(jobs.c.id == job_id, queue_job_id=queue_job_id)

    def cancel(self, job_id: str) -> JobRow | None:
        """Ask a job to stop: a queued one is cancelled at once, a running one at its next progress
        report (within about a second), or at once when its worker has gone silent (nobody would
        read the flag)."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)).values(cancel_requested=True))
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued").values(status="cancelled", finished_at=now))
            conn.execute(update(jobs).where(jobs.c.id == job_id, *self._silent())
                         .values(status="cancelled", finished_at=now, worker=None))
        return self.get(job_id)

    # --- the workers -----------------------------------------------------------------------------

    def claim(self, job_id: str, worker: str, *, statuses: tuple[str, ...] = ("queued",)) -> int | None:
        """Mark a job running for ``worker``; returns the attempt number (the fencing token for every
        later write of this attempt), or None when the job is not in ``statuses`` any more (a
        running job only when its worker went silent). A job whose cancellation was asked for
        before it started becomes cancelled instead."""
        now = utcnow()
        claimable = jobs.c.status == "queued"
        if "running" in statuses:
            claimable = or_(claimable, and_(*self._silent()))
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued", jobs.c.cancel_requested.is_(True))
                         .values(status="cancelled", finished_at=now))
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, claimable, jobs.c.cancel_requested.is_(False))
                .values(status="running", attempts=jobs.c.attempts + 1, worker=worker, started_at=now, heartbeat_at=now)
            )
            if done.rowcount != 1:
                return None
            return conn.execute(select(jobs.c.attempts).where(jobs.c.id == job_id)).scalar_one()

    def claim_next(self, models: Iterable[str], worker: str) -> tuple[str, int] | None:
        """Claim the next queued job for one of ``models`` (highest priority, then oldest): (job id,
        attempt), or None."""
        query = (select(jobs.c.id).where(jobs.c.status == "queued", jobs.c.model_name.in_(list(models)))
                 .order_by(func.coalesce(jobs.c.priority, 0).desc(), jobs.c.created_at, jobs.c.id).limit(8))
        with self.engine.connect() as conn:
            candidates = conn.execute(query).scalars().all()
        for job_id in candidates:  # another worker may take each first: the UPDATE decides
            attempt = self.claim(job_id, worker)
            if attempt is not None:
                return job_id, attempt
        return None

    def progress(self, job_id: str, attempt: int, done: int, total: int) -> str:
        """Record progress (and the heartbeat) of a running attempt. Returns "ok", "cancel" (the
        user asked to cancel) or "lost" (this attempt no longer owns the job)."""
        with self.engine.begin() as conn:
            changed = conn.execute(update(jobs).where(*_attempt(job_id, attempt))
                                   .values(done=done, total=total, heartbeat_at=utcnow())).rowcount
            if changed != 1:
                return "lost"
            cancel = conn.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar_one()
        return "cancel" if cancel else "ok"

    def heartbeat(self, running: dict[str, int]) -> None:
        """Refresh the heartbeat of each (job id -> attempt) this process runs."""
        if not running:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            for job_id, attempt in running.items():
                conn.execute(update(jobs).where(*_attempt(job_id, attempt)).values(heartbeat_at=now))

    def finish(self, job_id: str, attempt: int, status: str, error: str | None = None) -> bool:
        """End a running attempt as done, error or cancelled; False if it no longer owned the job."""
        assert status in ("done", "error", "cancelled")
        now = utcnow()
        return self._update(*_attempt(job_id, attempt), status=status, error=error, finished_at=now, heartbeat_at=now) == 1

    def release(self, job_id: str, attempt: int) -> bool:
        """Put a running attempt back in the queue (its worker is shutting down, or could not write)."""
        return self._update(*_attempt(job_id, attempt), status="queued", worker=None) == 1

    def requeue_stale(self, older_than: dt.timedelta | None = None, models: Iterable[str] | None = None, *,
                      ids: Iterable[str] | None = None) -> list[str]:
        """Running jobs whose worker has not sent a heartbeat for ``older_than`` (default: the
        store's stale time): back to the queue, or cancelled if that was asked for, or ended as an
        error after ``max_attempts`` attempts. Returns the ids put back in the queue."""
        cutoff = utcnow() - (self.stale if older_than is None else older_than)
        where = [jobs.c.status == "running", or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < cutoff)]
        if models is not None:
            where.append(jobs.c.model_name.in_(list(models)))
        if ids is not None:
            where.append(jobs.c.id.in_([i for i in ids if usable_key(i)]))
        requeued, ended = [], []
        now = utcnow()
        with self.engine.begin() as conn:
            for job_id, attempts, cancel in conn.execute(select(jobs.c.id, jobs.c.attempts, jobs.c.cancel_requested).where(*where)).all():
                row = [jobs.c.id == job_id, jobs.c.attempts == attempts, *where]
                if cancel:
                    ended += [job_id] * conn.execute(update(jobs).where(*row).values(status="cancelled", finished_at=now, worker=None)).rowcount
                elif attempts >= self.max_attempts:
                    message = (f"the worker running this experiment stopped {attempts} times before it finished (it crashed, "
                               f"ran out of memory or lost the database); the server's log says more. Submit it again to retry")
                    ended += [job_id] * conn.execute(update(jobs).where(*row).values(status="error", error=message,
                                                                                     finished_at=now, worker=None)).rowcount
                else:
                    requeued += [job_id] * conn.execute(update(jobs).where(*row).values(status="queued", worker=None)).rowcount
        if requeued:
            log.warning("requeued %d job(s) whose worker stopped sending heartbeats: %s", len(requeued), ", ".join(requeued))
        if ended:
            log.warning("ended %d job(s) whose worker stopped sending heartbeats: %s", len(ended), ", ".join(ended))
        return requeued
