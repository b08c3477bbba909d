"""Fuzzing: Schemathesis generates requests from the app's OpenAPI schema (the spec's own JSON
schema for the bodies), at least 500 in all; no answer is a server error. Hypothesis does the same
for the explore form, which is not in the schema."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the fuzz tests need schemathesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from model_loaders import tiny  # noqa: E402
from patchstudio.settings import Settings  # noqa: E402
from patchstudio.web.app import create_app  # noqa: E402
from web_helpers import HTMX, form  # noqa: E402

EXAMPLES_PER_OPERATION = 100  # eight operations, two of them without parameters: over 500 cases
CASES: list[int] = []

_DB = Path(tempfile.mkdtemp(prefix="patchstudio-fuzz-")) / "fuzz.sqlite3"
APP = create_app(Settings(models=["default"], database_url=f"sqlite:///{_DB}", allowed_hosts=["*"], local_workers=0,
                          max_jobs_per_client=10_000), model_loader=tiny)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(APP) as client:  # the lifespan: store, model and queue for every generated request
        yield client


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_from_the_schema_gets_a_server_error(case):
    response = case.call()
    CASES.append(response.status_code)
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])


def test_the_schema_fuzz_ran_at_least_500_cases():
    assert len(CASES) >= 500, len(CASES)
    assert any(400 <= code < 500 for code in CASES)


FIELD_VALUES = st.one_of(st.text(max_size=80), st.sampled_from(["", "-1", "999999999999", "L0H0", "L-1H9.q", "custom", "each", "nan"]))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.dictionaries(st.sampled_from(sorted(form())), FIELD_VALUES, max_size=6),
       st.sampled_from(["activation_patching", "ablation", "attribution_patching", "path_patching", "self_repair", "input_influence"]))
def test_no_explore_form_gets_a_server_error(running_app, changes, method):
    response = running_app.post("/explore", data={**form(method=method), **changes}, headers=HTMX)
    assert response.status_code < 500, (changes, response.text[:500])
