"""Studies in the store: content-addressed ids, first write wins, an edit is a new study, and bad
input refused naming its field. SQLite always; PostgreSQL where PATCHSTUDIO_TEST_POSTGRES_URL is set."""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers import TINY_PAIRS
from patchstudio import studies
from patchstudio.engine.run import run
from patchstudio.errors import InputError
from test_store import store  # noqa: F401  (the SQLite / PostgreSQL store fixture)


def expected_id(title: str, notes: str, runs: list[str], parent: str | None) -> str:
    """The hand formula: sha256 of the sorted, compact JSON of the four fields, first 16 hex digits."""
    canonical = json.dumps({"notes": notes, "parent": parent, "runs": runs, "title": title}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@pytest.fixture
def run_ids(store, tiny_model):  # noqa: F811
    ids = []
    for component in ("head", "mlp_out", "attn_out"):
        ids.append(store.put(run(tiny_model, {"prompts": TINY_PAIRS, "component": component}), "f" * 64).id)
    return ids


def test_the_id_hashes_the_content_and_the_same_content_is_the_same_study(store, run_ids):  # noqa: F811
    content = studies.parse({"title": "  Name movers ", "notes": "one\r\ntwo ", "runs": run_ids})
    assert content.title == "Name movers" and content.notes == "one\ntwo"  # CRLF from a form, LF from the API: one id
    assert content.id == expected_id("Name movers", "one\ntwo", run_ids, None)
    first, wrote = studies.create(store, content)
    assert wrote and first.id == content.id
    again, wrote_again = studies.create(store, studies.parse({"title": "Name movers", "notes": "one\ntwo", "runs": run_ids}))
    assert not wrote_again and again == first  # the same row, created_at included
    assert studies.get(store, content.id) == first
    reordered = studies.parse({"title": "Name movers", "notes": "one\ntwo", "runs": run_ids[::-1]})
    assert reordered.id == expected_id("Name movers", "one\ntwo", run_ids[::-1], None) != content.id


def test_an_edit_is_a_new_study_and_the_old_one_keeps_its_content(store, run_ids):  # noqa: F811
    old, _ = studies.create(store, studies.parse({"title": "Draft", "notes": "first words", "runs": run_ids[:2]}))
    edit = studies.parse({"title": "Draft", "notes": "better words", "runs": [run_ids[2], run_ids[0]], "parent": old.id})
    new, wrote = studies.create(store, edit)
    assert wrote and new.id == expected_id("Draft", "better words", [run_ids[2], run_ids[0]], old.id) != old.id
    kept = studies.get(store, old.id)
    assert kept.content.notes == "first words" and kept.content.runs == run_ids[:2] and kept.content.parent is None
    assert [v.id for v in studies.versions(store, old.id)] == [new.id]
    assert studies.versions(store, new.id) == []
    # an edit back to the old words is still a new version: its parent is part of its content
    back, _ = studies.create(store, studies.parse({"title": "Draft", "notes": "first words", "runs": run_ids[:2], "parent": new.id}))
    assert back.id not in (old.id, new.id)
    assert [s.id for s in studies.recent(store, 2)] == [back.id, new.id]


@pytest.mark.parametrize("data, field, words", [
    ({"notes": "", "runs": ["0" * 16]}, "title", "Field required"),
    ({"title": "   ", "runs": ["0" * 16]}, "title", "needs a title"),
    ({"title": "a\nb", "runs": ["0" * 16]}, "title", "one line"),
    ({"title": "x" * (studies.TITLE_MAX_CHARS + 1), "runs": ["0" * 16]}, "title", f"at most {studies.TITLE_MAX_CHARS}"),
    ({"title": "t", "notes": "x" * (studies.NOTES_MAX_CHARS + 1), "runs": ["0" * 16]}, "notes", "at most 20,000"),
    ({"title": "a\x00b", "runs": ["0" * 16]}, "title", "NUL character in the title"),
    ({"title": "t", "notes": "\ud800", "runs": ["0" * 16]}, "notes", "lone surrogate in the notes"),
    ({"title": "t", "runs": []}, "runs", "at least one run"),
    ({"title": "t", "runs": [f"{i:016x}" for i in range(studies.RUNS_MAX + 1)]}, "runs", f"at most {studies.RUNS_MAX} runs"),
    ({"title": "t", "runs": ["0" * 16, "/runs/abc"]}, "runs.1", "not a run id"),
    ({"title": "t", "runs": ["0" * 16, "1" * 16, "0" * 16]}, "runs.2", r"already in the study \(runs.0\)"),
    ({"title": "t", "runs": ["0" * 16], "parent": "nope"}, "parent", "not a study id"),
    ({"title": "t", "runs": ["0" * 16], "colour": "red"}, "colour", "Extra inputs"),
    (["not", "an", "object"], "body", "JSON object"),
])
def test_bad_content_is_refused_naming_the_field(data, field, words):
    with pytest.raises(InputError, match=words) as caught:
        studies.parse(data)
    assert caught.value.field == field


def test_every_run_and_the_parent_must_be_stored(store, run_ids):  # noqa: F811
    with pytest.raises(InputError, match="runs.1: no stored run with id 0{16}") as caught:
        studies.create(store, studies.parse({"title": "t", "runs": [run_ids[0], "0" * 16]}))
    assert caught.value.field == "runs.1"
    with pytest.raises(InputError, match="parent: no study with id 1{16}") as caught:
        studies.create(store, studies.parse({"title": "t", "runs": run_ids, "parent": "1" * 16}))
    assert caught.value.field == "parent"
    assert studies.recent(store) == []  # nothing stored on refusal
