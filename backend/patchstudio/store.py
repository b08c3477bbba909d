"""Run records by id: a real database through SQLAlchemy (a SQLite file by default, any URL such
as PostgreSQL via DATABASE_URL).

A run record keeps the spec, the result, the model's name and a fingerprint of its weights, and
the versions of patchstudio and TransformerLens that computed it. Records are content-addressed by
the spec's id and written once (``Store.insert_once``): putting an id that exists keeps the stored
record, so a link always shows what it first showed and bad input can never overwrite a stored
result. The job queue keeps its rows in the same database, on the same engine and metadata
(``jobs/store.py``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.schema import CreateColumn

from patchstudio.prompt_sets import PromptSet
from patchstudio.results import PatchResult

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


# Who asked for a run from the explore form (a browser's client key; the run may still be a job),
# so a page can list "your runs" beside everyone's. First request wins, like every row here.
run_requests = Table(
    "run_requests",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("client", String(128), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)


# Attention patterns of a run's prompts at one layer (computed on request, then served as stored).
patterns = Table(
    "patterns",
    metadata,
    Column("id", String(64), primary_key=True),  # "<run id>:<layer>"
    Column("data_json", Text, nullable=False),
)

# Studies: an ordered list of runs with a title and notes (patchstudio/studies.py reads and writes
# them). Content-addressed like runs: the id hashes the content, an edit is a new row naming its parent.
studies = Table(
    "studies",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("parent_id", String(32), nullable=True, index=True),
    Column("content_json", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Uploaded prompt sets by content id (prompt_sets.py): written once, like runs, so a spec naming an id
# always names the same rows.
prompt_sets = Table(
    "prompt_sets",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("n_pairs", Integer, nullable=False),
    Column("rows_json", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Small facts about the database itself (and a table readiness writes a row to, and deletes it from).
meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False))

RUN_TABLES = (runs, run_origins, run_companions, run_requests, patterns, studies, prompt_sets, meta)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


RUN_ID = re.compile(r"[0-9a-f]{16}")


def is_run_id(value: object) -> bool:
    """Run (and job) ids are spec hashes, 16 hex digits: routes look up nothing else."""
    return isinstance(value, str) and RUN_ID.fullmatch(value) is not None


def usable_key(value: object) -> bool:
    """A key any database can compare: PostgreSQL refuses a NUL in text (a server error where a
    lookup should simply find nothing), so a key holding one is never looked up."""
    return isinstance(value, str) and "\x00" not in value


# SQLite's messages for a database that cannot take writes right now: the disk is full, the file
# (or its -wal/-shm) is read-only, or the file cannot be opened. SQLAlchemy treats none of them as a
# lost connection, so a connection opened read-only would stay in the pool after the cause is gone.
SQLITE_UNAVAILABLE = ("disk is full", "readonly database", "unable to open database", "disk i/o error")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unreachable or cannot take writes right now (PostgreSQL
    down or restarting, a lost connection, SQLite read-only, locked too long or out of disk): a
    condition that passes, for a 503 with Retry-After rather than a 500."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    try:  # the queue library talks to PostgreSQL through psycopg directly
        import psycopg
        from procrastinate.exceptions import ConnectorException
    except ImportError:
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, ConnectorException))


def _sqlite_unavailable(context) -> None:
    message = str(context.original_exception).lower()
    if any(marker in message for marker in SQLITE_UNAVAILABLE):
        context.is_disconnect = True  # drop the pooled connections: the next use opens the file afresh


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
    """The database (its engine, its dialect, its tables) and the run records in it."""

    def __init__(self, url: str, *, create: bool | None = None):
        """Open (and on a first start, create) the database at ``url``; see ``check_sqlite_file``."""
        db_file = sqlite_file(url)
        if db_file is not None:
            check_sqlite_file(db_file, create)
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "handle_error", _sqlite_unavailable)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self.url = url
        self.postgresql = self.engine.dialect.name == "postgresql"  # the one place the dialect is asked
        self.create_tables(RUN_TABLES)

    def create_tables(self, tables: Iterable[Table]) -> None:
        """Create those of ``tables`` that are missing, and add the columns a table of an older
        version lacks (create_all never adds columns; every added column is nullable or has a
        server default). The job store creates its own the same way."""
        tables = list(tables)
        with self.engine.begin() as conn:
            if self.postgresql:  # a web server and N workers may start at once: one creates, the others wait
                conn.execute(text("SELECT pg_advisory_xact_lock(74280001)"))
            metadata.create_all(conn, tables=tables)
            for table in tables:
                present = {c["name"] for c in inspect(conn).get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present:
                        ddl = CreateColumn(column).compile(dialect=conn.dialect)
                        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))

    def insert_once(self, table: Table, **values: Any) -> bool:
        """Insert a row unless its key is taken (first write wins: an earlier or concurrent writer of
        the same key keeps its row). True when this call wrote it."""
        try:
            with self.engine.begin() as conn:
                conn.execute(table.insert().values(**values))
        except IntegrityError:
            return False
        return True

    def get(self, run_id: str) -> StoredRun | None:
        if not usable_key(run_id):
            return None
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
        self.insert_once(runs, **record)  # False: a concurrent request stored it first, and its record stays
        stored = self.get(result.id)
        assert stored is not None
        return stored

    def put_origin(self, run_id: str, form: dict[str, str]) -> None:
        """Remember how the form made this run's prompts (first write wins, like runs)."""
        self.insert_once(run_origins, id=run_id, form_json=json.dumps(form, sort_keys=True))

    def get_origin(self, run_id: str) -> dict[str, str] | None:
        if not usable_key(run_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(run_origins.c.form_json).where(run_origins.c.id == run_id)).first()
        return json.loads(row[0]) if row else None

    def put_prompt_set(self, prompt_set: PromptSet) -> bool:
        """Store a checked set under its id (first write wins); True when this call wrote it."""
        return self.insert_once(prompt_sets, id=prompt_set.id, n_pairs=len(prompt_set.pairs),
                                rows_json=prompt_set.canonical_json(), created_at=utcnow())

    def get_prompt_set(self, set_id: str) -> PromptSet | None:
        if not usable_key(set_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(prompt_sets.c.rows_json).where(prompt_sets.c.id == set_id)).first()
        return PromptSet.from_rows(json.loads(row[0])) if row else None

    def put_patterns(self, run_id: str, layer: int, data: dict) -> None:
        self.insert_once(patterns, id=f"{run_id}:{layer}", data_json=json.dumps(data))  # a concurrent one: the same values

    def get_patterns(self, run_id: str, layer: int) -> dict | None:
        if not usable_key(run_id):
            return None
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

    def put_request(self, run_id: str, client: str) -> None:
        """Remember that ``client`` asked for this run (its first request is kept)."""
        self.insert_once(run_requests, run_id=run_id, client=client, created_at=utcnow())

    def requested_by(self, client: str, limit: int = 12) -> list[RunSummary]:
        """The stored runs ``client`` asked for, most recently asked first."""
        query = (select(runs.c.id, runs.c.method, runs.c.model_name, runs.c.created_at, runs.c.spec_json)
                 .join(run_requests, run_requests.c.run_id == runs.c.id).where(run_requests.c.client == client)
                 .order_by(run_requests.c.created_at.desc(), runs.c.id).limit(limit))
        with self.engine.connect() as conn:
            return [RunSummary(**row) for row in conn.execute(query).mappings().all()]

    # --- companion runs ------------------------------------------------------------------------

    def link_companions(self, parent_id: str, children: dict[str, str]) -> None:
        """Record ``children`` (role -> run id) as companions of ``parent_id``. A companion of a
        companion is filed under the run the user asked for (one level, so lists stay flat); a
        child that is the parent itself, or already linked, is left as it is."""
        root = self.get_companion(parent_id)
        parent_id = root.parent_id if root is not None else parent_id
        for role, child in children.items():
            if child != parent_id:
                self.insert_once(run_companions, id=child, parent_id=parent_id, role=role)

    def unlink_companion(self, run_id: str) -> None:
        """The user asked for this run itself (from the form): it is no longer only a companion."""
        with self.engine.begin() as conn:
            conn.execute(run_companions.delete().where(run_companions.c.id == run_id))

    def get_companion(self, run_id: str) -> Companion | None:
        """Whose companion this run (or job) is, if it is one."""
        if not usable_key(run_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(run_companions).where(run_companions.c.id == run_id)).mappings().first()
        return Companion(**row) if row is not None else None

    def get_companions(self, ids: Iterable[str]) -> dict[str, Companion]:
        ids = [i for i in ids if usable_key(i)]
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
        """Raise unless the database answers and commits a write: a probe row is committed, then
        deleted in a second commit. A rolled-back write proves nothing on SQLite (it never reaches
        the file, so a full disk or a read-only file passed); a commit has to. On failure the pool is
        emptied, so the next probe opens fresh connections and readiness comes back with the database."""
        key = f"readyz-{uuid.uuid4().hex}"
        try:
            with self.engine.begin() as conn:
                conn.execute(meta.insert().values(key=key, value=utcnow().isoformat()))
            with self.engine.begin() as conn:
                conn.execute(meta.delete().where(meta.c.key == key))
        except Exception:
            self.engine.dispose()
            raise

    def table_snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table (tests compare snapshots to prove a request stored nothing)."""
        out = {}
        with self.engine.connect() as conn:
            for table in metadata.sorted_tables:
                out[table.name] = sorted(tuple(map(str, r)) for r in conn.execute(select(table)).all())
        return out
