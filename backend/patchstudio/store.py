"""Results by id: a real database through SQLAlchemy (a SQLite file by default, any URL such as
PostgreSQL via DATABASE_URL).

A record keeps the spec, the result, the model's name and a fingerprint of its weights, and the
versions of patchstudio and TransformerLens that computed it. Records are content-addressed by
the spec's id and written once: putting an id that exists keeps the stored record, so a link
always shows what it first showed and bad input can never overwrite a stored result.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

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


# Attention patterns of a run's prompts at one layer (computed on request, then served as stored).
patterns = Table(
    "patterns",
    metadata,
    Column("id", String(64), primary_key=True),  # "<run id>:<layer>"
    Column("data_json", Text, nullable=False),
)


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _sqlite_write_ahead(dbapi_connection, _record) -> None:
    """SQLite in write-ahead-log mode, syncing at checkpoints rather than at every commit.

    With the default rollback journal each stored run waited for two fsyncs (the run, and the
    form it came from): about 20 ms of the explore page's ~85 ms request on this project's
    machine. WAL with synchronous=NORMAL cannot corrupt the file; a power cut (not a crash of the
    app) may lose the last few commits, which are results recomputed by their link. Readers also
    stop blocking the writer. (An in-memory database keeps its own journal; the pragma is a no-op.)
    """
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    def __init__(self, url: str):
        kwargs = {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        self.engine: Engine = create_engine(url, future=True, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_write_ahead)
        metadata.create_all(self.engine)

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

    def recent(self, limit: int = 12) -> list[RunSummary]:
        query = select(runs.c.id, runs.c.method, runs.c.model_name, runs.c.created_at, runs.c.spec_json)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(runs.c.created_at.desc()).limit(limit)).mappings().all()
        return [RunSummary(**row) for row in rows]

    def count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(runs.c.id)).all())
