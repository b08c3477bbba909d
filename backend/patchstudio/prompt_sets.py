"""Prompt sets: a user's file of prompt pairs, checked row by row and named by its content.

A set is read from CSV (a header row naming ``clean, corrupted, answer, wrong``) or JSONL (one
object per line with those keys); any other column is a role column (e.g. ``S1``, ``IO``; in JSONL
a ``roles`` object), kept with its row as text: its value names the clean prompt's word that has
that role, ``John``, or ``John#2`` for a word's second time (``models.prompts.word_at``; a value that
names no word, or a repeated word without its ``#n``, is a bad row). A spec's per-position sweep puts
the role's cell at that word in each prompt (``engine.inputs.text_roles``). Every bad row is
reported with its line number and the reason, all at once, and a set with any bad row is refused
whole: nothing of it is stored. A row is checked by the same rules as a pasted pair (``specs.PromptPair``: no empty field, the wrong answer differs from the
answer) and, on a model, by ``engine.inputs.prepare_pairs`` (equal token lengths, known words,
answers that follow the prompt as tokens of their own), each row on its own so each is named.

The set's id is the first 16 hex digits of the sha256 of its canonical JSON (rows in file order,
answers stripped as the spec's canonical form strips them, keys sorted): the same rows always get
the same id, so a spec that names the id names the exact data.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from pydantic import ValidationError

from patchstudio.errors import InputError, check_text
from patchstudio.models.prompts import role_errors
from patchstudio.specs import PromptPair

MAX_PAIRS = 10_000
PAIR_FIELDS = ("clean", "corrupted", "answer", "wrong")
PREVIEW_ROWS = 5
SET_ID = re.compile(r"[0-9a-f]{16}")
Format = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line of the file (CSV: the header is line 1)
    reason: str
    field: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


class PromptSetError(InputError):
    """A set refused: ``rows`` names every bad row (its line and why)."""

    def __init__(self, rows: Sequence[RowError], message: str | None = None):
        rows = list(rows)
        self.summary = message or f"{len(rows)} bad row{'s' * (len(rows) != 1)}, nothing stored"
        shown = "; ".join(f"line {r.line}: {r.reason}" for r in rows[:5])
        more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
        super().__init__(f"{self.summary}: {shown}{more}" if rows else self.summary,
                         field="prompt_set", detail={"rows": [r.as_dict() for r in rows]})
        self.rows = rows


@dataclass(frozen=True)
class PromptSet:
    pairs: tuple[PromptPair, ...]
    roles: tuple[dict[str, str], ...]  # per row: role column -> value (empty dicts without role columns)
    lines: tuple[int, ...] = ()  # the file line of each row (not part of the content)

    def rows(self) -> list[dict[str, Any]]:
        """The canonical rows: the pair (answers stripped) and its roles when it has any."""
        out = []
        for pair, roles in zip(self.pairs, self.roles):
            row: dict[str, Any] = {"clean": pair.clean, "corrupted": pair.corrupted,
                                   "answer": pair.answer.strip(), "wrong": pair.wrong.strip()}
            if roles:
                row["roles"] = dict(roles)
            out.append(row)
        return out

    def canonical_json(self) -> str:
        return json.dumps(self.rows(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @property
    def id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, Any]]) -> PromptSet:
        """A set from its canonical rows (as stored)."""
        return cls(tuple(PromptPair(**{k: r[k] for k in PAIR_FIELDS}) for r in rows),
                   tuple(dict(r.get("roles") or {}) for r in rows))


def _csv_records(text: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return
    names = [h.strip() for h in header]
    missing = [f for f in PAIR_FIELDS if f not in names]
    if missing:
        yield 1, RowError(1, f"the header has no {', '.join(missing)} column: it must name clean, corrupted, answer, wrong")
        return
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated or "" in names:
        yield 1, RowError(1, f"the header names {', '.join(repeated)} twice" if repeated else "the header has an unnamed column")
        return
    start = reader.line_num + 1
    for row in reader:
        line, start = start, reader.line_num + 1  # a quoted field may span lines: its row starts where it began
        if not any(cell.strip() for cell in row):
            continue  # blank lines are not rows
        if len(row) != len(names):
            yield line, RowError(line, f"{len(row)} fields where the header has {len(names)}")
            continue
        yield line, dict(zip(names, row))


def _jsonl_records(text: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            yield line, RowError(line, "not a JSON object")
            continue
        if not isinstance(value, dict):
            yield line, RowError(line, "not a JSON object")
            continue
        if isinstance(value.get("roles"), dict):  # the canonical rows' form (a set's JSON): its roles object
            value = {**{k: v for k, v in value.items() if k != "roles"}, **value["roles"]}
        yield line, value


def _row(line: int, record: dict[str, Any], max_chars: int | None) -> tuple[PromptPair, dict[str, str]] | list[RowError]:
    errors: list[RowError] = []
    for name, value in record.items():
        if name in PAIR_FIELDS and value is None:
            continue  # reported as missing below
        if not isinstance(value, str):
            errors.append(RowError(line, f"{name} is not text", name))
            continue
        try:
            check_text(value, name, max_chars)
        except InputError as exc:
            errors.append(RowError(line, str(exc), name))
    if errors:
        return errors
    try:
        pair = PromptPair(**{k: record[k] for k in PAIR_FIELDS if record.get(k) is not None})
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else None
            reason = f"missing field {name}" if err["type"] == "missing" else err["msg"].removeprefix("Value error, ")
            out.append(RowError(line, reason, name))
        return out
    roles = {k: v for k, v in record.items() if k not in PAIR_FIELDS}
    errors = [RowError(line, reason, name) for name, reason in role_errors(pair.clean, roles)]
    return errors if errors else (pair, roles)


def parse_prompt_set(data: str | bytes, fmt: Format, *, limit: int = MAX_PAIRS, max_chars: int | None = None) -> PromptSet:
    """The set in ``data`` (CSV or JSONL), or a PromptSetError naming every bad row: a missing or
    empty field, a wrong answer equal to the answer, text that is not text, a role value that names
    no word of its clean prompt, a pair repeated from an earlier line, and the first row past ``limit`` pairs."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise PromptSetError([], "the file is not UTF-8 text") from None
    data = data.removeprefix("\ufeff")
    records = _csv_records(data) if fmt == "csv" else _jsonl_records(data)
    pairs: list[PromptPair] = []
    roles: list[dict[str, str]] = []
    lines: list[int] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    n = 0
    for line, record in records:
        if isinstance(record, RowError):
            errors.append(record)
            continue
        n += 1
        if n > limit:
            errors.append(RowError(line, f"more than {limit:,} pairs: a set holds at most {limit:,}"))
            break
        checked = _row(line, record, max_chars)
        if isinstance(checked, list):
            errors.extend(checked)
            continue
        pair, row_roles = checked
        key = (pair.clean, pair.corrupted, pair.answer.strip(), pair.wrong.strip())
        if key in seen:
            errors.append(RowError(line, f"the same pair as line {seen[key]}"))
            continue
        seen[key] = line
        pairs.append(pair)
        roles.append(row_roles)
        lines.append(line)
    if errors:
        raise PromptSetError(errors)
    if not pairs:
        raise PromptSetError([], "the file holds no prompt pairs")
    return PromptSet(tuple(pairs), tuple(roles), tuple(lines))


def format_of(filename: str | None, content_type: str | None = None) -> Format:
    """CSV or JSONL from a file's name (or its content type); CSV when neither says."""
    name = (filename or "").lower()
    if name.endswith((".jsonl", ".ndjson", ".json")) or "json" in (content_type or ""):
        return "jsonl"
    return "csv"


CHECK_BATCH = 256  # rows tokenized per batch call when a set is checked on a model


def check_on_model(model, prompt_set: PromptSet) -> list[dict[str, Any]]:
    """Check every row on ``model`` as a spec's pairs are checked (``prepare_pairs``, one row at a
    time so each bad row is named, its texts tokenized ``CHECK_BATCH`` rows per batch call); the
    tokenization of each row, or a PromptSetError."""
    from patchstudio.engine.inputs import prepare_pairs, token_cache

    out: list[dict[str, Any]] = []
    errors: list[RowError] = []
    lines = prompt_set.lines or tuple(range(1, len(prompt_set.pairs) + 1))
    cache = None
    for k, (line, pair) in enumerate(zip(lines, prompt_set.pairs)):
        if k % CHECK_BATCH == 0:
            try:
                cache = token_cache(model, prompt_set.pairs[k:k + CHECK_BATCH])
            except Exception:  # noqa: BLE001 - a batch the tokenizer refuses: each row alone names its own error
                cache = None
        try:
            (prepared,) = prepare_pairs(model, [pair], same_length=False, cache=cache)
        except InputError as exc:
            errors.append(RowError(line, str(exc).removeprefix("prompt 1: "), exc.field))
            continue
        decode = model.tokenizer.decode
        out.append({"clean": prepared.clean_str, "corrupted": prepared.corrupted_str,
                    "answer": [decode([t]) for t in prepared.answer_ids], "wrong": [decode([t]) for t in prepared.wrong_ids]})
    if errors:
        raise PromptSetError(errors)
    return out


def fill_prompts(data: Mapping[str, Any], get: Callable[[str], PromptSet | None]) -> Mapping[str, Any]:
    """Spec data that names a stored set (``prompt_set``) with the set's pairs as its prompts; an
    InputError if no such set is stored, or if the data also gives prompts that are not the set's."""
    set_id = data.get("prompt_set")
    if not isinstance(set_id, str) or SET_ID.fullmatch(set_id) is None:
        return data  # absent, or parse_spec names what is wrong with it
    stored = get(set_id)
    if stored is None:
        raise InputError(f"no prompt set {set_id} is stored on this server: upload it first (POST /api/prompt-sets)",
                         field="prompt_set")
    pairs = [{k: row[k] for k in (*PAIR_FIELDS, "roles") if k in row} for row in stored.rows()]
    given = data.get("prompts")
    if not given:
        return {**data, "prompts": pairs}

    def key(pair: Any) -> Any:
        return tuple(str(pair.get(k, "")).strip() if k in ("answer", "wrong") else pair.get(k) for k in PAIR_FIELDS) \
            if isinstance(pair, Mapping) else None

    if not isinstance(given, (list, tuple)) or [key(p) for p in given] != [key(p) for p in pairs] \
            or any(p.get("roles") not in (None, {}, q.get("roles", {})) for p, q in zip(given, pairs)):
        raise InputError(f"the prompts are not those of prompt set {set_id}: give the set's id without prompts "
                         f"(its pairs are filled in), or the prompts without the id", field="prompts")
    if any(p.get("roles") != q.get("roles") for p, q in zip(given, pairs)):  # the set's roles go with its pairs
        return {**data, "prompts": [{**p, **({"roles": q["roles"]} if "roles" in q else {})} for p, q in zip(given, pairs)]}
    return data
