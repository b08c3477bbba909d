"""Fuzzing: Schemathesis generates requests from the app's OpenAPI schema (the spec's own JSON
schema for the bodies), at least 500 in all on SQLite and on PostgreSQL where
PATCHSTUDIO_TEST_POSTGRES_URL names one; no answer is a server error. Hypothesis does the same for
the explore form, which is not in the schema.

PATCHSTUDIO_FUZZ_EXAMPLES sets the examples per operation (default 100 on SQLite, 25 on
PostgreSQL): a run by hand with 200 sends over 1,000 cases to each store."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz tests need schemathesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from model_loaders import tiny  # noqa: E402
from patchstudio.settings import Settings  # noqa: E402
from patchstudio.web.app import create_app  # noqa: E402
from procs import POSTGRES_URL  # noqa: E402
from web_helpers import HTMX, form  # noqa: E402

EXAMPLES = int(os.environ.get("PATCHSTUDIO_FUZZ_EXAMPLES", "0"))
EXAMPLES_PER_OPERATION = EXAMPLES or 100  # the operations, some without parameters: over 500 cases
POSTGRES_EXAMPLES = EXAMPLES or 25
CASES: dict[str, list[int]] = {"sqlite": [], "postgresql": []}


def fuzz_app(url: str):
    return create_app(Settings(models=["default"], database_url=url, allowed_hosts=["*"], local_workers=0,
                               max_jobs_per_client=10_000, max_jobs_per_address=10_000, max_queued_jobs=100_000),
                      model_loader=tiny)


_DB = Path(tempfile.mkdtemp(prefix="patchstudio-fuzz-")) / "fuzz.sqlite3"
APP = fuzz_app(f"sqlite:///{_DB}")
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)

_PG_SCHEMA = f"fuzz_{uuid.uuid4().hex[:10]}"
PG_APP = None
if POSTGRES_URL:  # its schema exists before the app is asked for its OpenAPI document (that runs its lifespan)
    with create_engine(POSTGRES_URL).begin() as _conn:
        _conn.execute(text(f"CREATE SCHEMA {_PG_SCHEMA}"))
    PG_APP = fuzz_app(f"{POSTGRES_URL}{'&' if '?' in POSTGRES_URL else '?'}options=-csearch_path%3D{_PG_SCHEMA}")
pg_schema = schemathesis.openapi.from_asgi("/openapi.json", PG_APP if PG_APP is not None else APP)


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(APP) as client:  # the lifespan: store, model and queue for every generated request
        yield client


@pytest.fixture(scope="module")
def running_pg_app():
    if PG_APP is None:
        pytest.skip("PATCHSTUDIO_TEST_POSTGRES_URL is not set (CI sets it and starts PostgreSQL)")
    admin = create_engine(POSTGRES_URL)
    try:
        with TestClient(PG_APP) as client:
            yield client
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {_PG_SCHEMA} CASCADE"))
        admin.dispose()


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_from_the_schema_gets_a_server_error(case):
    response = case.call()
    CASES["sqlite"].append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])


@pg_schema.parametrize()
@settings(max_examples=POSTGRES_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_from_the_schema_gets_a_server_error_on_postgres(running_pg_app, case):
    response = case.call()
    CASES["postgresql"].append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])


def test_the_schema_fuzz_ran_at_least_500_cases():
    assert len(CASES["sqlite"]) >= 500, len(CASES["sqlite"])
    assert any(400 <= code < 500 for code in CASES["sqlite"])
    if PG_APP is not None:
        assert len(CASES["postgresql"]) >= 200, len(CASES["postgresql"])
    print(f"schemathesis cases: {', '.join(f'{k} {len(v)} ({sum(c >= 500 for c in v)} x 5xx)' for k, v in CASES.items())}")


FIELD_VALUES = st.one_of(st.text(max_size=80), st.sampled_from(["", "-1", "999999999999", "L0H0", "L-1H9.q", "custom", "each", "nan"]))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.dictionaries(st.sampled_from(sorted(form())), FIELD_VALUES, max_size=6),
       st.sampled_from(["activation_patching", "ablation", "attribution_patching", "path_patching", "self_repair", "input_influence"]))
def test_no_explore_form_gets_a_server_error(running_app, changes, method):
    response = running_app.post("/explore", data={**form(method=method), **changes}, headers=HTMX)
    assert response.status_code < 500, (changes, response.text[:500])
