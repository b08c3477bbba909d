"""Fixtures of the Tracr model tests: each test that asks for ``tracr_name`` runs once per model."""

from __future__ import annotations

import pytest

import patchstudio
from patchstudio.models.tracr import TASKS


@pytest.fixture(scope="module", params=list(TASKS))
def tracr_name(request):
    return request.param


@pytest.fixture(scope="module")
def tracr_model(tracr_name):
    return patchstudio.load_model(tracr_name)
