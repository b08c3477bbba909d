"""The job store on SQLite and, where PATCHSTUDIO_TEST_POSTGRES_URL names one, on PostgreSQL (an
isolated schema per test)."""

from __future__ import annotations

import pytest

from patchstudio.jobs.store import JobStore
from patchstudio.store import Store
from procs import POSTGRES_URL, postgres_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield JobStore(Store(f"sqlite:///{tmp_path}/jobs.sqlite3"))
        return
    if not POSTGRES_URL:
        pytest.skip("PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")
    with postgres_schema() as url:
        opened = JobStore(Store(url))
        yield opened
        opened.engine.dispose()
