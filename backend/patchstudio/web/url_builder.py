"""Every URL the app links to is built here, never by string-joining in templates."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote, urlencode

# The frontend's files (templates and static files): here, below the templates that link to them,
# because a static URL carries its file's content hash.
FRONTEND = Path(__file__).resolve().parents[3] / "frontend"

HTMX = "vendor/htmx-2.0.11.min.js"
PLOTLY = "vendor/plotly-3.7.0.min.js"
SWAGGER_JS = "vendor/swagger-ui-5.32.0-bundle.js"
SWAGGER_CSS = "vendor/swagger-ui-5.32.0.css"


def home() -> str:
    return "/"


def preset(name: str) -> str:
    return f"/?{urlencode({'preset': name})}"


def explore() -> str:
    return "/explore"


def run_page(run_id: str, **view: object) -> str:
    """A stored result's page; ``view`` holds view-only options, sent as ``_``-prefixed params."""
    query = urlencode({f"_{k}": v for k, v in view.items() if v is not None})
    return f"/runs/{run_id}" + (f"?{query}" if query else "")


def models_json() -> str:
    return "/api/models"


def model_load(name: str) -> str:
    """The page's Load button (answers the picker's panel); ``/api`` + this answers JSON."""
    return f"/models/{quote(name, safe='')}/load"


def model_load_json(name: str) -> str:
    return "/api" + model_load(name)


def model_unload_json(name: str) -> str:
    return f"/api/models/{quote(name, safe='')}/unload"


def models_panel() -> str:
    return "/models/panel"


def prompt_set_json(set_id: str) -> str:
    return f"/api/prompt-sets/{set_id}.json"


def prompt_set_upload() -> str:
    return "/prompt-sets/upload"


def compare(a: str, b: str | None = None, **view: object) -> str:
    query = urlencode({"a": a, **({"b": b} if b else {}), **{f"_{k}": v for k, v in view.items() if v is not None}})
    return f"/compare?{query}"


def compare_json(a: str, b: str) -> str:
    return f"/compare.json?{urlencode({'a': a, 'b': b})}"


def attention(run_id: str, layer: int, head: int | None = None, **view: object) -> str:
    query = urlencode({"layer": layer, **({"head": head} if head is not None else {}),
                       **{f"_{k}": v for k, v in view.items() if v is not None}})
    return f"/runs/{run_id}/attention?{query}"


def attention_json(run_id: str, layer: int) -> str:
    return f"/runs/{run_id}/attention.json?layer={layer}"


def run_json(run_id: str) -> str:
    return f"/runs/{run_id}.json"


def run_csv(run_id: str) -> str:
    return f"/runs/{run_id}.csv"


def figure1(run_id: str, **cell: int | None) -> str:
    """Figure 1 for one cell: GET shows what is stored; POST computes the missing companion runs."""
    query = urlencode({k: v for k, v in cell.items() if v is not None})
    return f"/runs/{run_id}/figure1" + (f"?{query}" if query else "")


def cell_prompts(run_id: str, **cell_and_view: object) -> str:
    """The selected cell's per-prompt values (a fragment). ``layer``, ``pos``, ``head`` name the cell;
    ``view`` is view state and goes as ``_view``."""
    view = cell_and_view.pop("view", None)
    query = urlencode({**{k: v for k, v in cell_and_view.items() if v is not None}, **({"_view": view} if view else {})})
    return f"/runs/{run_id}/prompts" + (f"?{query}" if query else "")


def agreement(run_id: str) -> str:
    """The attribution page's agreement with exact patching (GET shows it; POST computes the exact run)."""
    return f"/runs/{run_id}/agreement"


def circuit_edge(run_id: str, name: str | None = None) -> str:
    """A circuit's edge, patched exactly on the same prompts (GET: its stored run, or a button; POST
    computes it). Without ``name``: the URL the page's script completes with ``?name=``."""
    return f"/runs/{run_id}/edges" + (f"?{urlencode({'name': name})}" if name is not None else "")


def circuit_node(run_id: str, name: str | None = None) -> str:
    """A circuit's node in the node heatmap of the same prompts (GET: the stored cell, or a button)."""
    return f"/runs/{run_id}/nodes" + (f"?{urlencode({'name': name})}" if name is not None else "")


def circuit_export(run_id: str, n: int | None = None) -> str:
    """A circuit in the EAP-IG code's Graph JSON layout (its top ``n`` edges in the graph)."""
    return f"/runs/{run_id}/eap-ig.json" + (f"?{urlencode({'n': n})}" if n is not None else "")


def jobs() -> str:
    """The jobs list: running, queued and recently finished."""
    return "/jobs"


def jobs_json() -> str:
    return "/jobs.json"


def job(job_id: str) -> str:
    return f"/jobs/{job_id}"


def job_json(job_id: str) -> str:
    return f"/jobs/{job_id}.json"


def api_job_cancel(job_id: str) -> str:
    return f"/api/jobs/{job_id}/cancel"


def studies() -> str:
    """The studies list, and (POST) where the editor saves a study."""
    return "/studies"


def studies_json() -> str:
    return "/studies.json"


def study(study_id: str) -> str:
    return f"/studies/{study_id}"


def study_json(study_id: str) -> str:
    return f"/studies/{study_id}.json"


def study_notebook(study_id: str) -> str:
    return f"/studies/{study_id}.ipynb"


def study_new(runs: list[str] | tuple[str, ...] = ()) -> str:
    """The editor for a new study, starting from ``runs``."""
    query = urlencode([("runs", r) for r in runs])
    return "/studies/new" + (f"?{query}" if query else "")


def study_edit(study_id: str) -> str:
    """The editor for a new version of a study (saving never changes the old one)."""
    return f"/studies/{study_id}/edit"


def api_studies() -> str:
    return "/api/studies"


def docs() -> str:
    return "/docs"


def openapi() -> str:
    return "/openapi.json"


def job_cancel(job_id: str) -> str:
    return f"/jobs/{job_id}/cancel"


def static(path: str) -> str:
    """A versioned static URL (``?v=`` the file's content hash): cached for a year, and a new
    release's file gets a new URL."""
    return f"/static/{path}?v={_static_version(path)}"


@lru_cache(maxsize=None)
def _static_version(path: str) -> str:
    try:
        return hashlib.sha256((FRONTEND / "static" / path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "0"
