"""Web fixtures: the app on the tiny in-process model, with a fresh SQLite file per test."""

from __future__ import annotations

import pytest

from web_helpers import make_client


@pytest.fixture
def client(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model) as c:
        yield c
