"""SQLite out of disk space under a running job (issue 21, findings 3, 4 and 5): readiness says 503
while writes fail and 200 again once they work; reads keep working; a fresh run answers 503 with
Retry-After, not 500; the job's worker thread survives, and the job ends done once there is room.

The disk is a small tmpfs mounted for the test (root, where mounting is allowed), filled up with a
file; elsewhere every write is refused the way SQLite refuses it on a full disk (an injected
``database or disk is full`` on each INSERT, UPDATE and DELETE)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import event, text

from helpers import TINY_PAIRS
from procs import wait_for
from web_helpers import make_client

LONG = {"prompts": [TINY_PAIRS[0]] * 4, "component": "head", "positions": "each"}
SMALL = {"prompts": [TINY_PAIRS[1]], "component": "head"}


class TmpfsDisk:
    """A 64 MB tmpfs; ``fill`` writes a file until nothing is left, after truncating SQLite's WAL
    (a WAL file with room in it takes writes on a full disk)."""

    kind = "tmpfs"

    def __init__(self, path: Path):
        self.path, self.filler = path, path / "filler"

    def fill(self, engine) -> None:
        with engine.connect() as conn:
            conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
        with open(self.filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def free(self, engine) -> None:
        self.filler.unlink()


class InjectedFullDisk:
    """Every INSERT, UPDATE and DELETE fails as SQLite fails them on a full disk."""

    kind = "injected"

    def __init__(self, path: Path):
        self.path = path

    @staticmethod
    def _refuse(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            raise sqlite3.OperationalError("database or disk is full")

    def fill(self, engine) -> None:
        event.listen(engine, "before_cursor_execute", self._refuse)

    def free(self, engine) -> None:
        event.remove(engine, "before_cursor_execute", self._refuse)


@contextlib.contextmanager
def small_disk(tmp_path: Path, kind: str):
    path = tmp_path / "disk"
    path.mkdir()
    if kind == "injected":
        yield InjectedFullDisk(path)
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield TmpfsDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# The real tmpfs runs by hand (PATCHSTUDIO_TEST_TMPFS=1): in the suite it sometimes found the fresh
# 64 MB tmpfs already full when it went to fill it (ENOSPC on creating the filler, 2 of 5 runs on
# 2026-12-03, cause not found); the injected full disk tests the same handling every time.
KINDS = ["tmpfs", "injected"] if os.environ.get("PATCHSTUDIO_TEST_TMPFS") == "1" else ["injected"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_disk_under_a_job_leaves_nothing_stuck_and_readiness_tells_the_truth(tmp_path, tiny_model, kind):
    with small_disk(tmp_path, kind) as disk, \
            make_client(disk.path, tiny_model, background_patched_runs=0, chunk_rows=1, job_heartbeat_seconds=0.2,
                        job_stale_seconds=2) as client:
        service = client.app.state.service
        engine, queue = service.store.engine, service.jobs
        assert client.get("/readyz").status_code == 200
        job_id = client.post("/api/jobs", json=LONG).json()["id"]
        wait_for(lambda: (j := client.get(f"/jobs/{job_id}.json").json())["status"] == "running" and j["done"] > 0, 120,
                 "the job to make progress")

        disk.fill(engine)
        wait_for(lambda: client.get("/readyz").status_code == 503, 30, "readiness to see the full disk")
        ready = client.get("/readyz")
        assert ready.json()["checks"]["database"] == "unavailable" and ready.headers["retry-after"]
        assert client.get(f"/jobs/{job_id}.json").status_code == 200  # reads still work
        fresh = client.post("/api/runs", json=SMALL)
        assert fresh.status_code == 503 and fresh.headers["retry-after"], fresh.text
        assert "database is unavailable" in fresh.json()["detail"]
        wait_for(lambda: job_id not in queue._running, 180, "the job's attempt to give up writing")
        assert all(t.is_alive() for t in queue._workers)  # the job thread survived

        disk.free(engine)
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "readiness to come back")
        wait_for(lambda: client.get(f"/jobs/{job_id}.json").json()["status"] == "done", 180, "the job to end done")
        assert client.get(f"/runs/{job_id}.json").status_code == 200
        assert client.post("/api/runs", json=SMALL).status_code == 202  # every run is a job here (background_patched_runs=0)
        after = client.post("/api/jobs", json={**LONG, "metric": "prob"}).json()["id"]
        wait_for(lambda: client.get(f"/jobs/{after}.json").json()["status"] == "done", 180, "a job after the episode")


@contextlib.contextmanager
def immutable(*files: Path):
    """chattr +i: not even root may write the files (skips where the filesystem has no such flag)."""
    present = [f for f in files if f.exists()]
    done = []
    try:
        for f in present:
            if subprocess.run(["chattr", "+i", str(f)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not supported here")
            done.append(f)
        yield
    finally:
        for f in done:
            subprocess.run(["chattr", "-i", str(f)], check=False)


def _files(db: Path) -> list[Path]:
    """The database and its write-ahead log. (Not its -shm, which SQLite maps into memory: a write to
    an immutable mapping is a SIGBUS, which would end the test process, not the server's readiness.)"""
    return [db, db.with_name(db.name + "-wal")]


def test_readiness_follows_a_read_only_database_both_ways(tmp_path, tiny_model):
    """Finding 4: with the database and its -wal (and -shm) immutable, readiness said 200 while every
    fresh run failed; opened read-only at start it said 503 and stayed so after the files were
    writable again."""
    import shutil

    if shutil.which("chattr") is None:
        pytest.skip("no chattr")
    db = tmp_path / "runs.sqlite3"
    with make_client(tmp_path, tiny_model) as client:
        assert client.get("/readyz").status_code == 200
        with immutable(*_files(db)):
            assert client.get("/readyz").status_code == 503
            fresh = client.post("/api/runs", json=SMALL)
            assert fresh.status_code == 503 and fresh.headers["retry-after"], fresh.text
        assert client.get("/readyz").status_code == 200
        assert client.post("/api/runs", json=SMALL).status_code == 200
    with immutable(*_files(db)):  # read-only from the start
        with make_client(tmp_path, tiny_model) as client:
            assert client.get("/readyz").status_code == 503
            for f in _files(db):
                subprocess.run(["chattr", "-i", str(f)], check=False)
            assert client.get("/readyz").status_code == 200
