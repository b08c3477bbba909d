"""Annotated dependencies for routes. ``StoredRunDep`` and ``JobDep`` load what the path names or
answer 404, as the FastAPI template's ``CurrentUser`` does: a route that takes one never sees a
missing run, and ids that are not spec hashes are never looked up."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from patchstudio.service import ExperimentService
from patchstudio.jobs.store import JobRow
from patchstudio.store import StoredRun, is_run_id
from patchstudio.web.guard import client_key
from patchstudio.web.watchers import PAGE_HEADER, Watchers, page_token

def known_id(run_id: str) -> bool:
    """Ids are spec hashes: anything else is not looked up at all."""
    return is_run_id(run_id)


# The dependencies that only read the request are async: FastAPI runs a sync one in the thread pool,
# a hop per dependency per request.


async def get_service(request: Request) -> ExperimentService:
    return request.app.state.service


async def get_client(request: Request) -> str:
    """Who is asking, for per-client caps and job ownership: the session cookie's key, or the
    address, carrying the address (a ``jobs.store.Client``; see guard.py)."""
    return client_key(request)


async def get_watchers(request: Request) -> Watchers:
    return request.app.state.watchers


async def get_page(request: Request) -> str | None:
    """The asking page's token (app.js sends one per page load), or None."""
    return page_token(request.headers.get(PAGE_HEADER))


ServiceDep = Annotated[ExperimentService, Depends(get_service)]
ClientDep = Annotated[str, Depends(get_client)]
WatchersDep = Annotated[Watchers, Depends(get_watchers)]
PageDep = Annotated[str | None, Depends(get_page)]
RunId = Annotated[str, Path(description="A run's id: 16 hex digits (the spec's hash).", max_length=64)]
JobId = Annotated[str, Path(description="A job's id: its spec's id.", max_length=64)]


def find_run(service: ExperimentService, run_id: str) -> StoredRun | None:
    """The stored run with this id, or None (an id that is not a spec hash is not looked up)."""
    return service.store.get(run_id) if known_id(run_id) else None


def find_job(service: ExperimentService, job_id: str) -> JobRow | None:
    """The job with this id, or None."""
    return service.jobs.store.get(job_id) if known_id(job_id) else None


def stored_run(service: ExperimentService, run_id: str) -> StoredRun:
    """The stored run with this id, or 404."""
    stored = find_run(service, run_id)
    if stored is None:
        raise HTTPException(404, f"no stored run with id {run_id[:64]!r}")
    return stored


def get_stored_run(service: ServiceDep, run_id: RunId) -> StoredRun:
    return stored_run(service, run_id)


def get_job(service: ServiceDep, job_id: JobId) -> JobRow:
    job = find_job(service, job_id)
    if job is None:
        raise HTTPException(404, f"no job with id {job_id[:64]!r}")
    return job


StoredRunDep = Annotated[StoredRun, Depends(get_stored_run)]
JobDep = Annotated[JobRow, Depends(get_job)]
