"""A circuit's edges and nodes as runs of their own, and its export in the EAP-IG layout.

``/runs/{id}/edges?name=EDGE`` is the edge patched alone, exactly (``edge_patching``), on the
circuit's prompts, metric and direction; ``/runs/{id}/nodes?name=NODE`` is the node's cell in the
node heatmap (activation patching of every head, or every MLP output, on the same prompts). GET
redirects to the stored run (303), or shows what it would cost and a button; POST computes it
through the service's submit rule (now when small, else as a background job, whose page the
redirect then shows). ``/runs/{id}/eap-ig.json?n=`` is the circuit of the top n edges as the
EAP-IG code's ``Graph.from_json`` (and so the MIB circuit track's evaluation) reads it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from patchstudio.analysis import circuit as C
from patchstudio.errors import InputError
from patchstudio.results import PatchResult
from patchstudio.service import ExperimentService
from patchstudio.specs import SpecBase, parse_spec
from patchstudio.web import companions as comp
from patchstudio.web import url_builder as urls
from patchstudio.web.deps import ClientDep, ServiceDep, StoredRunDep
from patchstudio.web.methods import describe
from patchstudio.web.templating import templates

router = APIRouter(include_in_schema=False)

NAME = Query(..., max_length=200, description="An edge or node of the circuit's graph, as it names them.")


def _circuit(result: PatchResult) -> PatchResult:
    if result.spec.method != "circuit":
        raise InputError(f"this run's method is {result.spec.method}: edges and nodes belong to circuit results", field="method")
    return result


def edge_spec(result: PatchResult, name: str) -> SpecBase:
    """The edge patched alone on the circuit's prompts, metric and direction (InputError if it has no such edge)."""
    if name not in result.labels["edge"]:
        raise InputError(f"edge {name[:80]!r} is not in this circuit's graph (edges are named like "
                         f"{result.labels['edge'][0]!r})", field="name")
    spec = result.spec
    return parse_spec({"model": spec.model, "method": "edge_patching", "prompts": [p.model_dump() for p in spec.prompts],
                       "metric": spec.metric, "direction": spec.direction, "edges": [name]})


def node_spec(result: PatchResult, name: str) -> tuple[SpecBase, dict[str, int | None]]:
    """The node heatmap holding the node (activation patching of every head, or every MLP output, at
    all positions, same prompts, metric and direction) and the node's cell in it."""
    cell = C.node_cell(name)
    known = {s["name"] for s in (result.extras or {}).get("graph", {}).get("senders", [])}
    if cell is None or name not in known:
        raise InputError(f"{name[:80]!r} has no cell in a node heatmap: nodes with one are heads 'aL.hH' and MLPs 'mL' "
                         f"of this model", field="name")
    component, layer, head = cell
    spec = result.spec
    return parse_spec({"model": spec.model, "method": "activation_patching", "prompts": [p.model_dump() for p in spec.prompts],
                       "metric": spec.metric, "direction": spec.direction, "component": component, "positions": "all"}), \
        {"layer": layer, "head": head}


def _show(request: Request, service: ExperimentService, result: PatchResult, role: str, spec: SpecBase, what: str,
          target: str, post_url: str) -> Response:
    """The stored run (303), else a page: what it is, its cost, and a button that POSTs."""
    found = comp.gather(service, result, {role: spec})
    if role in found.runs:
        return RedirectResponse(target, status_code=303)
    if role in found.running:
        return RedirectResponse(urls.run_page(spec.id), status_code=303)  # the run's page shows its job
    context: dict[str, Any] = {
        "result": result, "what": what, "post_url": post_url, "description": describe(result), "cost": found.cost,
        "background": found.cost > service.settings.background_patched_runs, "problem": found.problem,
        "failed": found.failed.get(role), "back": urls.run_page(result.id),
    }
    return templates.TemplateResponse(request, "circuit_link.html", context)


def _compute(service: ExperimentService, result: PatchResult, role: str, spec: SpecBase, target: str, client: str) -> Response:
    comp.compute(service, result, {role: spec}, client)
    stored = service.store.get(spec.id)
    return RedirectResponse(target if stored is not None else urls.run_page(spec.id), status_code=303)


@router.get("/runs/{run_id}/edges", response_class=HTMLResponse)
def edge(request: Request, service: ServiceDep, stored: StoredRunDep, name: str = NAME) -> Response:
    result = _circuit(stored.result)
    spec = edge_spec(result, name)
    return _show(request, service, result, "edge", spec, f"Exact patching of edge {name} alone", urls.run_page(spec.id),
                 urls.circuit_edge(result.id, name))


@router.post("/runs/{run_id}/edges", response_class=HTMLResponse)
def compute_edge(service: ServiceDep, client: ClientDep, stored: StoredRunDep, name: str = NAME) -> Response:
    result = _circuit(stored.result)
    spec = edge_spec(result, name)
    return _compute(service, result, "edge", spec, urls.run_page(spec.id), client)


@router.get("/runs/{run_id}/nodes", response_class=HTMLResponse)
def node(request: Request, service: ServiceDep, stored: StoredRunDep, name: str = NAME) -> Response:
    result = _circuit(stored.result)
    spec, cell = node_spec(result, name)
    return _show(request, service, result, "node", spec, f"Node {name} in the node heatmap (activation patching)",
                 urls.run_page(spec.id, **cell), urls.circuit_node(result.id, name))


@router.post("/runs/{run_id}/nodes", response_class=HTMLResponse)
def compute_node(service: ServiceDep, client: ClientDep, stored: StoredRunDep, name: str = NAME) -> Response:
    result = _circuit(stored.result)
    spec, cell = node_spec(result, name)
    return _compute(service, result, "node", spec, urls.run_page(spec.id, **cell), client)


@router.get("/runs/{run_id}/eap-ig.json", include_in_schema=True, tags=["runs"],
            summary="A circuit in the EAP-IG code's Graph JSON layout (read by the MIB circuit track's evaluation)")
def eap_ig(stored: StoredRunDep, n: int | None = Query(None, ge=0, description="Edges in the circuit (default: the spec's top_k).")) -> Response:
    result = _circuit(stored.result)
    k = result.spec.top_k if n is None else min(n, len(result.labels["edge"]))
    return JSONResponse(C.eap_ig_graph(result, k),
                        headers={"Content-Disposition": f'attachment; filename="circuit-{result.id}-top{k}.json"'})
