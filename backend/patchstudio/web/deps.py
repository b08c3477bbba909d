"""Annotated dependencies for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from patchstudio.settings import Settings
from patchstudio.web.jobs import JobManager
from patchstudio.web.service import ExperimentService


def get_service(request: Request) -> ExperimentService:
    return request.app.state.service


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[ExperimentService, Depends(get_service)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
