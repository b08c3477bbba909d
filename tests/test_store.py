"""The store on a real database: SQLite always; PostgreSQL when PATCHSTUDIO_TEST_POSTGRES_URL names
one (CI starts a PostgreSQL server and sets it)."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from helpers import TINY_PAIRS
from patchstudio.engine.run import run
from patchstudio.store import Store, meta, prompt_sets, utcnow

POSTGRES_URL = os.environ.get("PATCHSTUDIO_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path}/runs.sqlite3")
        return
    if not POSTGRES_URL:
        pytest.skip("PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")
    schema = f"t_{uuid.uuid4().hex[:10]}"  # an isolated schema per test
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield Store(f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}")
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_put_get_round_trip(store, tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"})
    stored = store.put(result, "f" * 64)
    again = store.get(result.id)
    assert again is not None and again.result == result == stored.result
    assert again.model_fingerprint == "f" * 64 and again.model_name == "default"
    assert again.transformer_lens_version == result.versions["transformer-lens"]
    assert store.get("0" * 16) is None


def test_first_write_wins_so_links_never_change(store, tiny_model):
    result = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"})
    first = store.put(result, "a" * 64)
    altered = result.model_copy(update={"clean": 123.0})
    second = store.put(altered, "b" * 64)
    assert second.result.clean == result.clean and second.model_fingerprint == "a" * 64
    assert second.created_at == first.created_at
    assert store.count() == 1


def test_recent_lists_newest_first(store, tiny_model):
    ids = []
    for component in ("head", "mlp_out", "attn_out"):
        ids.append(store.put(run(tiny_model, {"prompts": TINY_PAIRS, "component": component}), "c" * 64).id)
    recent = store.recent(2)
    assert [r.id for r in recent] == ids[::-1][:2]
    assert recent[0].method == "activation_patching"


def test_a_missing_sqlite_file_is_created_only_on_a_first_start(tmp_path):
    from patchstudio.store import DatabaseMissing, marker_file

    db = tmp_path / "lab" / "runs.sqlite3"
    Store(f"sqlite:///{db}").engine.dispose()  # first start: the file and its marker
    assert db.exists() and marker_file(db).exists()
    Store(f"sqlite:///{db}").engine.dispose()  # later starts find it
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    with pytest.raises(DatabaseMissing, match="refusing to start on an empty database"):
        Store(f"sqlite:///{db}")  # data existed here: no silent empty lab
    assert not db.exists()
    with pytest.raises(DatabaseMissing, match="PATCHSTUDIO_CREATE_DB is off"):
        Store(f"sqlite:///{tmp_path}/elsewhere.sqlite3", create=False)
    Store(f"sqlite:///{db}", create=True).engine.dispose()  # PATCHSTUDIO_CREATE_DB=1: start a new one
    assert db.exists()


def test_companions_are_filed_under_the_run_that_asked_and_left_out_of_top_level_recent(store, tiny_model):
    parent = store.put(run(tiny_model, {"prompts": TINY_PAIRS, "component": "head"}), "f" * 64)
    child = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "method": "ablation"})
    grandchild = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "direction": "noise"})
    store.link_companions(parent.id, {"ablation": child.id, "self": parent.id})  # a run is never its own companion
    store.link_companions(child.id, {"patching": grandchild.id})  # a companion's companion: under the same parent
    store.link_companions("0" * 16, {"ablation": child.id})  # first write wins
    for r in (child, grandchild):
        store.put(r, "f" * 64)
    assert store.get_companion(parent.id) is None
    assert store.get_companion(child.id).parent_id == parent.id
    assert store.get_companion(grandchild.id).parent_id == parent.id
    assert [r.id for r in store.recent(10, top_level=True)] == [parent.id]
    assert {r.id for r in store.recent(10)} == {parent.id, child.id, grandchild.id}
    grouped = store.stored_companions([parent.id])
    assert [(r.id, role) for r, role in grouped[parent.id]] == [(child.id, "ablation"), (grandchild.id, "patching")]
    store.unlink_companion(grandchild.id)  # asked for from the form: a run of its own
    assert {r.id for r in store.recent(10, top_level=True)} == {parent.id, grandchild.id}


def test_a_sqlite_file_is_written_ahead_and_synced_at_checkpoints(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/runs.sqlite3")
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL


def test_origins_and_patterns_are_written_once_and_the_job_table_shares_the_database(store, request):
    """insert_once is the one "first write wins" insert: a second write of a key keeps the first row."""
    from patchstudio.jobs.store import JobStore

    assert store.postgresql == ("postgresql" in request.node.callspec.id)
    store.put_origin("r1", {"family": "ioi", "n": "8"})
    store.put_origin("r1", {"family": "induction", "n": "4"})
    assert store.get_origin("r1") == {"family": "ioi", "n": "8"}
    store.put_patterns("r1", 0, {"values": [1.0]})
    store.put_patterns("r1", 0, {"values": [2.0]})
    assert store.get_patterns("r1", 0) == {"values": [1.0]} and store.get_patterns("r1", 1) is None
    assert store.insert_once(meta, key="k", value="first") and not store.insert_once(meta, key="k", value="second")

    JobStore(store)  # creates its table beside the runs' (and again is harmless)
    JobStore(store)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
        assert conn.execute(text("SELECT value FROM meta WHERE key = 'k'")).scalar() == "first"


def test_a_prompt_set_is_stored_once_under_its_id_and_read_back_as_written(store):
    from patchstudio.prompt_sets import PromptSet, parse_prompt_set

    text = "clean,corrupted,answer,wrong,S2\nWhen Mary and John,When Mary and Mary, John , Mary,John\nA b,A c,x,y,b\n"
    first = parse_prompt_set(text, "csv")
    assert store.get_prompt_set(first.id) is None
    assert store.put_prompt_set(first) and not store.put_prompt_set(first)
    again = store.get_prompt_set(first.id)
    assert again is not None and again.id == first.id
    assert [p.model_dump() for p in again.pairs] == [
        {"clean": "When Mary and John", "corrupted": "When Mary and Mary", "answer": "John", "wrong": "Mary"},
        {"clean": "A b", "corrupted": "A c", "answer": "x", "wrong": "y"},
    ]
    assert again.roles == ({"S2": "John"}, {"S2": "b"})
    # first write wins: another set can never land under a stored id
    other = PromptSet(first.pairs[:1], first.roles[:1])
    assert not store.insert_once(prompt_sets, id=first.id, n_pairs=1, rows_json=other.canonical_json(), created_at=utcnow())
    assert len(store.get_prompt_set(first.id).pairs) == 2
    assert store.get_prompt_set("0" * 16) is None and store.get_prompt_set("a\x00b") is None
