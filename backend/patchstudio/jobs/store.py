"""The jobs table and its state machine: the durable state of background sweeps, in the same
database as the run records (the run store's engine and metadata).

A job row (id = the spec's id) holds its status, progress, a user-safe error, who asked (a client
key, for the per-client cap), and a heartbeat and attempt count for whichever worker runs it:

    submit          new, error, cancelled -> queued (a queued, running or done job is joined as it is)
    claim           queued -> running, attempt + 1      cancel    queued -> cancelled; running: flagged
    progress        running -> running (+ heartbeat)    finish    running -> done, error or cancelled
    release, requeue_stale    running -> queued (its worker is stopping, or died)

Every state change is one conditional UPDATE, so two workers (threads, processes or machines) on
the same database can never both claim a job, and a worker that lost its job (declared stale, then
rerun elsewhere) can no longer write to it: its writes are fenced by the attempt number it claimed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text, func, select, update

from patchstudio.store import Store, metadata, utcnow

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


class TooManyJobs(Exception):
    """A client already has its cap of queued and running jobs."""

    def __init__(self, active: int, limit: int):
        super().__init__(
            f"you already have {active} background job(s) queued or running (the limit is {limit}); "
            "wait for one to finish or cancel one"
        )
        self.active, self.limit = active, limit


def _attempt(job_id: str, attempt: int) -> tuple:
    """The row while ``attempt`` runs it: a worker's every write is conditioned on this (the fence)."""
    return jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running"


class JobStore:
    """The jobs of one database: reads for pages, transitions for the web side and the workers."""

    def __init__(self, db: Store):
        self.db = db  # the run store: engine, URL, table creation and insert-once, shared
        self.engine = db.engine
        db.create_tables([jobs])

    def _update(self, *where: Any, **values: Any) -> int:
        """One conditional UPDATE; the number of rows it changed (0: the condition no longer held)."""
        with self.engine.begin() as conn:
            return conn.execute(update(jobs).where(*where).values(**values)).rowcount

    def _rows(self, query) -> list[JobRow]:
        with self.engine.connect() as conn:
            return [JobRow(**row) for row in conn.execute(query).mappings().all()]

    # --- reads -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRow | None:
        found = self._rows(select(jobs).where(jobs.c.id == job_id))
        return found[0] if found else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, JobRow]:
        ids = list(job_ids)
        return {row.id: row for row in self._rows(select(jobs).where(jobs.c.id.in_(ids)))} if ids else {}

    def active_count(self, client: str) -> int:
        query = select(func.count()).select_from(jobs).where(jobs.c.client == client, jobs.c.status.in_(ACTIVE))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def by_status(self, statuses: Iterable[str], limit: int = 50) -> list[JobRow]:
        """Jobs in ``statuses``: queued ones oldest first (the order workers take them), others newest first."""
        statuses = list(statuses)
        order = [jobs.c.created_at, jobs.c.id] if statuses == ["queued"] else [
            func.coalesce(jobs.c.finished_at, jobs.c.started_at, jobs.c.created_at).desc(), jobs.c.id]
        return self._rows(select(jobs).where(jobs.c.status.in_(statuses)).order_by(*order).limit(limit))

    def finished(self, models: Iterable[str], limit: int = 20) -> list[JobRow]:
        """The newest finished (done) jobs of these models: what their measured throughput comes from."""
        return self._rows(select(jobs).where(jobs.c.status == "done", jobs.c.model_name.in_(list(models)),
                                             jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None), jobs.c.total > 0)
                          .order_by(jobs.c.finished_at.desc()).limit(limit))

    # --- the web side ----------------------------------------------------------------------------

    def submit(self, spec: Any, client: str, max_active: int | None = None, total: int = 0) -> tuple[JobRow, bool]:
        """The job for ``spec``: the existing one while it is queued, running or done (the same
        experiment twice joins it), else a new queued one. Returns (job, created). Raises
        TooManyJobs when creating one would put ``client`` over ``max_active`` active jobs.
        ``total``: the patched runs it needs, when the caller priced it (a queued job then shows
        its size and an estimate before a worker takes it; the worker's reports replace it)."""
        existing = self.get(spec.id)
        if existing is not None and existing.status in (*ACTIVE, "done"):
            return existing, False
        if max_active is not None:
            active = self.active_count(client)
            if active >= max_active:
                raise TooManyJobs(active, max_active)
        fresh = {"status": "queued", "done": 0, "total": total, "error": None, "client": client, "cancel_requested": False,
                 "worker": None, "queue_job_id": None, "created_at": utcnow(), "started_at": None, "finished_at": None,
                 "heartbeat_at": None}
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
        report (within about a second)."""
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)).values(cancel_requested=True))
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                         .values(status="cancelled", finished_at=utcnow()))
        return self.get(job_id)

    # --- the workers -----------------------------------------------------------------------------

    def claim(self, job_id: str, worker: str, *, statuses: tuple[str, ...] = ("queued",)) -> int | None:
        """Mark a job running for ``worker``; returns the attempt number (the fencing token for every
        later write of this attempt), or None when the job is not in ``statuses`` any more. A job
        whose cancellation was asked for before it started becomes cancelled instead."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued", jobs.c.cancel_requested.is_(True))
                         .values(status="cancelled", finished_at=now))
            done = conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status.in_(statuses), jobs.c.cancel_requested.is_(False))
                .values(status="running", attempts=jobs.c.attempts + 1, worker=worker, started_at=now, heartbeat_at=now)
            )
            if done.rowcount != 1:
                return None
            return conn.execute(select(jobs.c.attempts).where(jobs.c.id == job_id)).scalar_one()

    def claim_next(self, models: Iterable[str], worker: str) -> tuple[str, int] | None:
        """Claim the oldest queued job for one of ``models``: (job id, attempt), or None."""
        query = (select(jobs.c.id).where(jobs.c.status == "queued", jobs.c.model_name.in_(list(models)))
                 .order_by(jobs.c.created_at).limit(8))
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
        """Put a running attempt back in the queue (its worker is shutting down)."""
        return self._update(*_attempt(job_id, attempt), status="queued", worker=None) == 1

    def requeue_stale(self, older_than: dt.timedelta, models: Iterable[str] | None = None) -> list[str]:
        """Running jobs whose worker has not sent a heartbeat for ``older_than`` (the process died):
        back to the queue (or cancelled, if that was asked for). Returns their ids."""
        where = [jobs.c.status == "running", jobs.c.heartbeat_at < utcnow() - older_than]
        if models is not None:
            where.append(jobs.c.model_name.in_(list(models)))
        with self.engine.begin() as conn:
            ids = conn.execute(select(jobs.c.id).where(*where)).scalars().all()
            for job_id in ids:
                conn.execute(update(jobs).where(jobs.c.id == job_id, *where).values(status="queued", worker=None))
        if ids:
            log.warning("requeued %d job(s) whose worker stopped sending heartbeats: %s", len(ids), ", ".join(ids))
        return list(ids)
