"""Studies: an ordered list of stored runs with a title and notes in Markdown, shared at
``/studies/<id>`` (the web layer draws them; this module keeps them).

Immutable like runs. A study's id is the first 16 hex digits of the sha256 of its canonical content
(title, notes, the ordered run ids, and the study it was edited from), and it is written once
(``Store.insert_once``: first write wins). Editing makes a new study whose ``parent`` is the old one,
so an old link keeps showing what it showed, and the same content posted twice is the same study.
The rows live in the run store's ``studies`` table, on its engine, as the job queue's rows do.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator
from sqlalchemy import select

from patchstudio.errors import InputError, field_errors
from patchstudio.store import Store, runs, studies, utcnow

TITLE_MAX_CHARS = 200
NOTES_MAX_CHARS = 20_000
RUNS_MAX = 50

STUDY_ID = re.compile(r"^[0-9a-f]{16}$")  # runs' ids have the same shape: a content hash


def _run_id(value: str) -> str:
    if not STUDY_ID.match(value):
        raise ValueError(f"{value[:40]!r} is not a run id (16 hex digits, as in /runs/<id>)")
    return value


def _plain_text(value: str, what: str) -> str:
    # hashed as UTF-8 and stored as text: a lone surrogate cannot be encoded, and PostgreSQL refuses NUL
    if "\x00" in value:
        raise ValueError(f"a NUL character in the {what} (text cannot hold one)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"a lone surrogate in the {what} (not valid Unicode text)") from None
    return value


def _study_id(value: str) -> str:
    if not STUDY_ID.match(value):
        raise ValueError(f"{value[:40]!r} is not a study id (16 hex digits, as in /studies/<id>)")
    return value


class StudyContent(BaseModel):
    """What a study says, and all its id depends on: what ``POST /api/studies`` takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    title: str
    notes: str = ""
    runs: list[Annotated[str, AfterValidator(_run_id)]]
    parent: Annotated[str, AfterValidator(_study_id)] | None = None

    @field_validator("title")
    @classmethod
    def _title(cls, value: str) -> str:
        value = _plain_text(value, "title").strip()
        if not value:
            raise ValueError("a study needs a title")
        if "\n" in value or "\r" in value:
            raise ValueError("the title is one line (the notes take the rest)")
        if len(value) > TITLE_MAX_CHARS:
            raise ValueError(f"the title is {len(value):,} characters; at most {TITLE_MAX_CHARS:,} (TITLE_MAX_CHARS)")
        return value

    @field_validator("notes")
    @classmethod
    def _notes(cls, value: str) -> str:
        # a form sends CRLF, the API usually LF: the same notes must make the same id either way
        value = _plain_text(value, "notes").replace("\r\n", "\n").replace("\r", "\n").strip()
        if len(value) > NOTES_MAX_CHARS:
            raise ValueError(f"the notes are {len(value):,} characters; at most {NOTES_MAX_CHARS:,} (NOTES_MAX_CHARS)")
        return value

    @field_validator("runs")
    @classmethod
    def _runs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a study needs at least one run")
        if len(value) > RUNS_MAX:
            raise ValueError(f"a study holds at most {RUNS_MAX} runs (RUNS_MAX); this one has {len(value)}")
        return value

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]


class StoredStudy(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    content: StudyContent
    created_at: dt.datetime


def parse(data: Any) -> StudyContent:
    """The study ``data`` describes, or an ``InputError`` naming the first bad field (``runs.2``)."""
    if not isinstance(data, dict):
        raise InputError("body: a study is a JSON object, {title, notes, runs, parent}", field="body")
    try:
        content = StudyContent.model_validate(data)
    except ValidationError as exc:
        first = field_errors(exc, frozenset())[0]
        raise InputError(f"{first['field'] or 'study'}: {first['message']}", field=first["field"] or "body") from None
    seen: dict[str, int] = {}
    for i, run_id in enumerate(content.runs):
        if run_id in seen:
            raise InputError(f"runs.{i}: run {run_id} is already in the study (runs.{seen[run_id]})", field=f"runs.{i}")
        seen[run_id] = i
    return content


def create(store: Store, content: StudyContent) -> tuple[StoredStudy, bool]:
    """Store ``content`` unless its id is stored already; every run must be stored and the parent,
    if any, too. The stored study, and True when this call wrote it."""
    with store.engine.connect() as conn:
        stored_runs = set(conn.execute(select(runs.c.id).where(runs.c.id.in_(content.runs))).scalars())
    for i, run_id in enumerate(content.runs):
        if run_id not in stored_runs:
            raise InputError(f"runs.{i}: no stored run with id {run_id} (a run still computing can be added once it is done)",
                             field=f"runs.{i}")
    if content.parent is not None and get(store, content.parent) is None:
        raise InputError(f"parent: no study with id {content.parent}", field="parent")
    wrote = store.insert_once(studies, id=content.id, parent_id=content.parent, content_json=content.canonical_json(),
                              created_at=utcnow())
    stored = get(store, content.id)
    assert stored is not None
    return stored, wrote


def _stored(row: Any) -> StoredStudy:
    return StoredStudy(id=row["id"], content=StudyContent.model_validate_json(row["content_json"]), created_at=row["created_at"])


def get(store: Store, study_id: str) -> StoredStudy | None:
    """The study with this id, or None (an id that is not a content hash is not looked up)."""
    if not STUDY_ID.match(study_id):
        return None
    with store.engine.connect() as conn:
        row = conn.execute(select(studies).where(studies.c.id == study_id)).mappings().first()
    return _stored(row) if row is not None else None


def versions(store: Store, study_id: str) -> list[StoredStudy]:
    """The studies edited from this one (its newer versions), oldest first."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(studies).where(studies.c.parent_id == study_id)
                            .order_by(studies.c.created_at, studies.c.id)).mappings().all()
    return [_stored(row) for row in rows]


def recent(store: Store, limit: int = 50) -> list[StoredStudy]:
    """The newest studies, every version."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(studies).order_by(studies.c.created_at.desc(), studies.c.id).limit(limit)).mappings().all()
    return [_stored(row) for row in rows]
