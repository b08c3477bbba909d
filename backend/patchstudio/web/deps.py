"""Annotated dependencies for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from patchstudio.jobs import JobQueue
from patchstudio.service import ExperimentService
from patchstudio.settings import Settings
from patchstudio.web.watchers import PAGE_HEADER, Watchers, page_token


def get_service(request: Request) -> ExperimentService:
    return request.app.state.service


def get_jobs(request: Request) -> JobQueue:
    return request.app.state.jobs


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_client(request: Request) -> str:
    """Who is asking, for per-client caps: the session cookie's key, or the address (see guard.py)."""
    from patchstudio.web.app import client_key

    return client_key(request)


def get_watchers(request: Request) -> Watchers:
    return request.app.state.watchers


def get_page(request: Request) -> str | None:
    """The asking page's token (app.js sends one per page load), or None."""
    return page_token(request.headers.get(PAGE_HEADER))


ServiceDep = Annotated[ExperimentService, Depends(get_service)]
JobsDep = Annotated[JobQueue, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[str, Depends(get_client)]
WatchersDep = Annotated[Watchers, Depends(get_watchers)]
PageDep = Annotated[str | None, Depends(get_page)]
