"""The API's shared shapes: a job as JSON, the 202 that points at it, the refusals the OpenAPI
document lists, and the spec example it shows."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from patchstudio.jobs.store import JobRow
from patchstudio.web import url_builder as urls

REFUSALS = {
    413: {"description": "The body is over the server's size limit (PATCHSTUDIO_MAX_BODY_BYTES)."},
    422: {"description": "Bad input: `field` names it, `detail` says why."},
    409: {"description": "This id is stored (or queued) from another computation: other weights or another dtype than this server's model."},
    429: {"description": "This client (or its address) already has its cap of queued and running jobs."},
    503: {"description": "The database is unavailable, or the job queue is full: try again after `Retry-After` seconds."},
}

SPEC_EXAMPLE = {
    "model": "default",
    "method": "activation_patching",
    "prompts": [
        {
            "clean": "When Mary and John went to the store, John gave a drink to",
            "corrupted": "When Mary and John went to the store, Mary gave a drink to",
            "answer": "Mary",
            "wrong": "John",
        }
    ],
    "component": "head",
    "positions": "all",
    "direction": "denoise",
    "metric": "logit_diff",
}


def job_payload(job: JobRow) -> dict[str, Any]:
    """One job as JSON, with its links: the data of ``/jobs/{id}.json`` and of each line of ``/jobs``."""
    return {**job.as_dict(), "links": {"job": urls.job_json(job.id), "page": urls.job(job.id), "run": urls.run_json(job.id),
                                       "cancel": urls.api_job_cancel(job.id)}}


def accepted(job: JobRow) -> JSONResponse:
    """202 with the job, pointing at where to poll it."""
    return JSONResponse(job_payload(job), status_code=202, headers={"Location": urls.job_json(job.id)})
