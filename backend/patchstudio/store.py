"""Results and jobs by id: a real database through SQLAlchemy (a SQLite file by default, any URL
such as PostgreSQL via DATABASE_URL).

A run record keeps the spec, the result, the model's name and a fingerprint of its weights, and
the versions of patchstudio and TransformerLens that computed it. Records are content-addressed by
the spec's id and written once: putting an id that exists keeps the stored record, so a link
always shows what it first showed and bad input can never overwrite a stored result.

A job row (id = the spec's id) is the durable state of a background sweep: status, progress,
a user-safe error, who asked (a client key, for the per-client cap), and a heartbeat and attempt
count for whichever worker runs it. Every state change is one conditional UPDATE, so two workers
(threads, processes or machines) on the same database can never both claim a job, and a worker
that lost its job (declared stale, then rerun elsewhere) can no longer write to it: its writes
are fenced by the attempt number it claimed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError

from patchstudio.results import PatchResult

log = logging.getLogger("patchstudio.store")

metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("method", String(32), nullable=False),
    Column("model_name", String(200), nullable=False),
    Column("model_fingerprint", String(64), nullable=False),
    Column("patchstudio_version", String(32), nullable=False),
    Column("transformer_lens_version", String(32), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("result_json", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


# How a run's prompts were made in the explore form (a built-in family, its size, seed and template),
# so a shared link reopens the form as it was. UI provenance, not part of the experiment (nor its id).
run_origins = Table(
    "run_origins",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("form_json", Text, nullable=False),
)


# Companion runs (Figure 1's and the triangulation's, attribution's exact run) and the run whose page
# asked for them, so lists can show what the user asked for with its companions under it. Written when
# they are asked for (also for jobs still computing); first write wins. Its own table rather than a
# column of run_origins: create_all adds tables to an existing database but never columns.
run_companions = Table(
    "run_companions",
    metadata,
    Column("id", String(32), primary_key=True),  # the companion's run (and job) id
    Column("parent_id", String(32), nullable=False, index=True),
    Column("role", String(32), nullable=False),
)


# Attention patterns of a run's prompts at one layer (computed on request, then served as stored).
patterns = Table(
    "patterns",
    metadata,
    Column("id", String(64), primary_key=True),  # "<run id>:<layer>"
    Column("data_json", Text, nullable=False),
)
JOB_STATUSES = ("queued", "running", "done", "error", "cancelled")
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

# Small facts about the database itself (and a table readiness can write to and roll back).
meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; every time here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


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


def _iso(value: dt.datetime | None) -> str | None:
    return aware(value).isoformat() if value is not None else None


class TooManyJobs(Exception):
    """A client already has its cap of queued and running jobs."""

    def __init__(self, active: int, limit: int):
        super().__init__(
            f"you already have {active} background job(s) queued or running (the limit is {limit}); "
            "wait for one to finish or cancel one"
        )
        self.active, self.limit = active, limit


class DatabaseMissing(RuntimeError):
    """The SQLite file is gone although this directory had a database: refuse to start empty."""


class Companion(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    parent_id: str
    role: str


class StoredRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    method: str
    model_name: str
    model_fingerprint: str
    patchstudio_version: str
    transformer_lens_version: str
    created_at: dt.datetime
    result: PatchResult


class RunSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    method: str
    model_name: str
    created_at: dt.datetime
    spec_json: str


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def marker_file(db_file: Path) -> Path:
    return db_file.with_name(db_file.name + ".created")


def check_sqlite_file(db_file: Path, create: bool | None) -> None:
    """Create a missing SQLite file only on a first start.

    The first start writes a marker beside the file. If the file is later missing while its
    marker is there (a volume not mounted, a path mistyped, a file deleted), starting would
    silently show an empty lab: refuse instead, unless ``create`` is True (PATCHSTUDIO_CREATE_DB=1).
    ``create`` False never creates a file (a deployment that must find its database)."""
    if db_file.exists():
        if not marker_file(db_file).exists():
            marker_file(db_file).write_text("patchstudio database created before markers; kept as is\n")
        return
    marker = marker_file(db_file)
    if create is False:
        raise DatabaseMissing(f"the database file {db_file} does not exist and PATCHSTUDIO_CREATE_DB is off")
    if marker.exists() and create is not True:
        raise DatabaseMissing(
            f"the database file {db_file} is missing, but {marker.name} beside it says one was created "
            f"here before: refusing to start on an empty database. Restore the file (or mount its volume), "
            f"or set PATCHSTUDIO_CREATE_DB=1 to start a new one"
        )
    db_file.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"patchstudio database first created {utcnow().isoformat()}\n")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers go on while a worker writes progress; busy_timeout makes concurrent writers
    # (request threads, job workers, other servers on the same file) wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    def __init__(self, url: str, *, create: bool | None = None):
        """Open (and on a first start, create) the database at ``url``; see ``check_sqlite_file``."""
        db_file = sqlite_file(url)
        if db_file is not None:
            check_sqlite_file(db_file, create)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self.url = url
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # a web server and N workers may start at once
                conn.execute(text("SELECT pg_advisory_xact_lock(74280001)"))
            metadata.create_all(conn)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def get(self, run_id: str) -> StoredRun | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            return None
        return StoredRun(
            id=row["id"],
            method=row["method"],
            model_name=row["model_name"],
            model_fingerprint=row["model_fingerprint"],
            patchstudio_version=row["patchstudio_version"],
            transformer_lens_version=row["transformer_lens_version"],
            created_at=row["created_at"],
            result=PatchResult.model_validate_json(row["result_json"]),
        )

    def put(self, result: PatchResult, model_fingerprint: str) -> StoredRun:
        """Store a result under its spec id, unless that id is stored already (first write wins)."""
        existing = self.get(result.id)
        if existing is not None:
            return existing
        record = {
            "id": result.id,
            "method": result.spec.method,
            "model_name": result.model.name,
            "model_fingerprint": model_fingerprint,
            "patchstudio_version": result.versions.get("patchstudio", "unknown"),
            "transformer_lens_version": result.versions.get("transformer-lens", "unknown"),
            "spec_json": result.spec.canonical_json(),
            "result_json": result.model_dump_json(),
            "created_at": dt.datetime.now(dt.timezone.utc),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(runs.insert().values(**record))
        except IntegrityError:  # a concurrent request stored the same id first
            pass
        stored = self.get(result.id)
        assert stored is not None
        return stored

    def put_origin(self, run_id: str, form: dict[str, str]) -> None:
        """Remember how the form made this run's prompts (first write wins, like runs)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(run_origins.insert().values(id=run_id, form_json=json.dumps(form, sort_keys=True)))
        except IntegrityError:
            pass

    def get_origin(self, run_id: str) -> dict[str, str] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(run_origins.c.form_json).where(run_origins.c.id == run_id)).first()
        return json.loads(row[0]) if row else None

    def put_patterns(self, run_id: str, layer: int, data: dict) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(patterns.insert().values(id=f"{run_id}:{layer}", data_json=json.dumps(data)))
        except IntegrityError:  # computed by a concurrent request: the same values
            pass

    def get_patterns(self, run_id: str, layer: int) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(patterns.c.data_json).where(patterns.c.id == f"{run_id}:{layer}")).first()
        return json.loads(row[0]) if row else None

    def recent(self, limit: int = 12, *, top_level: bool = False) -> list[RunSummary]:
        """The newest runs; ``top_level``: only runs someone asked for (no companion runs)."""
        query = select(runs.c.id, runs.c.method, runs.c.model_name, runs.c.created_at, runs.c.spec_json)
        if top_level:
            query = query.outerjoin(run_companions, run_companions.c.id == runs.c.id).where(run_companions.c.id.is_(None))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)).mappings().all()
        return [RunSummary(**row) for row in rows]

    # --- companion runs ------------------------------------------------------------------------

    def link_companions(self, parent_id: str, children: dict[str, str]) -> None:
        """Record ``children`` (role -> run id) as companions of ``parent_id``. A companion of a
        companion is filed under the run the user asked for (one level, so lists stay flat); a
        child that is the parent itself, or already linked, is left as it is."""
        root = self.get_companion(parent_id)
        parent_id = root.parent_id if root is not None else parent_id
        for role, child in children.items():
            if child == parent_id:
                continue
            try:
                with self.engine.begin() as conn:
                    conn.execute(run_companions.insert().values(id=child, parent_id=parent_id, role=role))
            except IntegrityError:
                pass

    def unlink_companion(self, run_id: str) -> None:
        """The user asked for this run itself (from the form): it is no longer only a companion."""
        with self.engine.begin() as conn:
            conn.execute(run_companions.delete().where(run_companions.c.id == run_id))

    def get_companion(self, run_id: str) -> Companion | None:
        """Whose companion this run (or job) is, if it is one."""
        with self.engine.connect() as conn:
            row = conn.execute(select(run_companions).where(run_companions.c.id == run_id)).mappings().first()
        return Companion(**row) if row is not None else None

    def get_companions(self, ids: Iterable[str]) -> dict[str, Companion]:
        ids = list(ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(run_companions).where(run_companions.c.id.in_(ids))).mappings().all()
        return {row["id"]: Companion(**row) for row in rows}

    def stored_companions(self, parent_ids: Iterable[str]) -> dict[str, list[tuple[RunSummary, str]]]:
        """The stored companion runs of each parent, oldest first: parent id -> [(run, role)]."""
        ids = list(parent_ids)
        if not ids:
            return {}
        query = (select(runs.c.id, runs.c.method, runs.c.model_name, runs.c.created_at, runs.c.spec_json,
                        run_companions.c.parent_id, run_companions.c.role)
                 .join(run_companions, run_companions.c.id == runs.c.id)
                 .where(run_companions.c.parent_id.in_(ids)).order_by(runs.c.created_at, runs.c.id))
        out: dict[str, list[tuple[RunSummary, str]]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings().all():
                summary = RunSummary(**{k: row[k] for k in ("id", "method", "model_name", "created_at", "spec_json")})
                out.setdefault(row["parent_id"], []).append((summary, row["role"]))
        return out

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(runs)).scalar_one()

    def check_writable(self) -> None:
        """Raise unless the database answers and takes a write (rolled back: nothing is stored)."""
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.execute(meta.insert().values(key=f"readyz-{utcnow().timestamp()}", value="probe"))
            finally:
                transaction.rollback()

    # --- jobs ----------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        return JobRow(**row) if row is not None else None

    def get_jobs(self, job_ids: Iterable[str]) -> dict[str, JobRow]:
        ids = list(job_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.id.in_(ids))).mappings().all()
        return {row["id"]: JobRow(**row) for row in rows}

    def active_jobs(self, client: str) -> int:
        query = select(func.count()).select_from(jobs).where(jobs.c.client == client, jobs.c.status.in_(ACTIVE))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def submit_job(self, spec: Any, client: str, max_active: int | None = None, total: int = 0) -> tuple[JobRow, bool]:
        """The job for ``spec``: the existing one while it is queued, running or done (the same
        experiment twice joins it), else a new queued one. Returns (job, created). Raises
        TooManyJobs when creating one would put ``client`` over ``max_active`` active jobs.
        ``total``: the patched runs it needs, when the caller priced it (a queued job then shows
        its size and an estimate before a worker takes it; the worker's reports replace it)."""
        existing = self.get_job(spec.id)
        if existing is not None and existing.status in (*ACTIVE, "done"):
            return existing, False
        if max_active is not None:
            active = self.active_jobs(client)
            if active >= max_active:
                raise TooManyJobs(active, max_active)
        now = utcnow()
        fresh = {"status": "queued", "done": 0, "total": total, "error": None, "client": client, "cancel_requested": False,
                 "worker": None, "queue_job_id": None, "created_at": now, "started_at": None, "finished_at": None,
                 "heartbeat_at": None}
        created = False
        if existing is not None:  # an errored or cancelled job runs again on request
            with self.engine.begin() as conn:
                done = conn.execute(update(jobs).where(jobs.c.id == spec.id, jobs.c.status.in_(("error", "cancelled"))).values(**fresh))
            created = done.rowcount == 1
        else:
            try:
                with self.engine.begin() as conn:
                    conn.execute(jobs.insert().values(id=spec.id, spec_json=spec.canonical_json(), method=spec.method,
                                                      model_name=spec.model, attempts=0, **fresh))
                created = True
            except IntegrityError:  # another request created it first: join that one
                pass
        job = self.get_job(spec.id)
        assert job is not None
        return job, created

    def list_jobs(self, statuses: Iterable[str], limit: int = 50) -> list[JobRow]:
        """Jobs in ``statuses``: queued ones oldest first (the order workers take them), others newest first."""
        statuses = list(statuses)
        order = [jobs.c.created_at, jobs.c.id] if statuses == ["queued"] else [
            func.coalesce(jobs.c.finished_at, jobs.c.started_at, jobs.c.created_at).desc(), jobs.c.id]
        query = select(jobs).where(jobs.c.status.in_(statuses)).order_by(*order).limit(limit)
        with self.engine.connect() as conn:
            return [JobRow(**row) for row in conn.execute(query).mappings().all()]

    def finished_jobs(self, models: Iterable[str], limit: int = 20) -> list[JobRow]:
        """The newest finished (done) jobs of these models: what their measured throughput comes from."""
        query = (select(jobs).where(jobs.c.status == "done", jobs.c.model_name.in_(list(models)),
                                    jobs.c.started_at.is_not(None), jobs.c.finished_at.is_not(None), jobs.c.total > 0)
                 .order_by(jobs.c.finished_at.desc()).limit(limit))
        with self.engine.connect() as conn:
            return [JobRow(**row) for row in conn.execute(query).mappings().all()]

    def set_queue_job_id(self, job_id: str, queue_job_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(queue_job_id=queue_job_id))

    def claim_job(self, job_id: str, worker: str, *, statuses: tuple[str, ...] = ("queued",)) -> int | None:
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
            attempt = self.claim_job(job_id, worker)
            if attempt is not None:
                return job_id, attempt
        return None

    def job_progress(self, job_id: str, attempt: int, done: int, total: int) -> str:
        """Record progress (and the heartbeat) of a running attempt. Returns "ok", "cancel" (the
        user asked to cancel) or "lost" (this attempt no longer owns the job)."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running")
                .values(done=done, total=total, heartbeat_at=utcnow())
            ).rowcount
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
                conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running")
                             .values(heartbeat_at=now))

    def finish_job(self, job_id: str, attempt: int, status: str, error: str | None = None) -> bool:
        """End a running attempt as done, error or cancelled; False if it no longer owned the job."""
        assert status in ("done", "error", "cancelled")
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running")
                .values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow())
            ).rowcount
        return changed == 1

    def release_job(self, job_id: str, attempt: int) -> bool:
        """Put a running attempt back in the queue (its worker is shutting down)."""
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.attempts == attempt, jobs.c.status == "running")
                .values(status="queued", worker=None)
            ).rowcount
        return changed == 1

    def request_cancel(self, job_id: str) -> JobRow | None:
        """Ask a job to stop: a queued one is cancelled at once, a running one at its next progress
        report (within about a second)."""
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)).values(cancel_requested=True))
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
                         .values(status="cancelled", finished_at=now))
        return self.get_job(job_id)

    def requeue_stale(self, older_than: dt.timedelta, models: Iterable[str] | None = None) -> list[str]:
        """Running jobs whose worker has not sent a heartbeat for ``older_than`` (the process died):
        back to the queue (or cancelled, if that was asked for). Returns their ids."""
        cutoff = utcnow() - older_than
        where = [jobs.c.status == "running", jobs.c.heartbeat_at < cutoff]
        if models is not None:
            where.append(jobs.c.model_name.in_(list(models)))
        with self.engine.begin() as conn:
            ids = conn.execute(select(jobs.c.id).where(*where)).scalars().all()
            for job_id in ids:
                conn.execute(update(jobs).where(jobs.c.id == job_id, *where)
                             .values(status="queued", worker=None))
        if ids:
            log.warning("requeued %d job(s) whose worker stopped sending heartbeats: %s", len(ids), ", ".join(ids))
        return list(ids)

    def table_snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table (tests compare snapshots to prove a request stored nothing)."""
        out = {}
        with self.engine.connect() as conn:
            for table in metadata.sorted_tables:
                out[table.name] = sorted(tuple(map(str, r)) for r in conn.execute(select(table)).all())
        return out
