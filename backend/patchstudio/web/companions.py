"""Companion runs: the other experiments a page compares a result with (Figure 1's patching and
ablation, the triangulation rows, the attribution page's exact patching).

Reads never compute: ``gather`` only looks in the store (and prices what is missing, which
tokenizes but stores nothing). ``compute`` is for POST routes: what is missing goes through the
service's submit rule with the prices ``gather`` found (each companion is priced once): computed in
the request when together they are small (``background_patched_runs``), else queued as background
jobs whose progress the page polls. Either way each companion is stored like any run, under its own id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from patchstudio.engine.run import Plan
from patchstudio.errors import InputError
from patchstudio.results import PatchResult
from patchstudio.service import ExperimentService
from patchstudio.specs import SpecBase
from patchstudio.jobs import JobRow


ROLE_LABELS = {
    "patching": "exact activation patching",
    "ablation": "mean ablation",
    "attribution": "the attribution estimate",
    "path": "path patching to the logits",
    "repair": "self-repair (TE and DE)",
    "direct": "direct effect",
    "exact": "exact activation patching",
    "edge": "exact edge patching",
    "node": "activation patching (node heatmap)",
}

# Companions a page cannot do without; the others are left out (``Companions.unavailable``) where
# the model or the answers do not support them (self-repair on Gemma 2, attribution for answers of
# several tokens), instead of failing the whole page.
REQUIRED_ROLES = frozenset({"patching", "ablation", "exact"})


@dataclass
class Companions:
    specs: dict[str, SpecBase]  # role -> spec
    runs: dict[str, PatchResult] = field(default_factory=dict)  # role -> stored result
    jobs: dict[str, JobRow] = field(default_factory=dict)  # role -> its job (any status), where one exists
    plans: dict[str, Plan] = field(default_factory=dict)  # role -> the missing one's price (none while its job runs)
    problem: str | None = None  # why the missing ones cannot be computed here (model not loaded, budget)
    unavailable: dict[str, str] = field(default_factory=dict)  # optional role -> why this model cannot run it

    @property
    def missing(self) -> dict[str, SpecBase]:
        return {role: spec for role, spec in self.specs.items() if role not in self.runs}

    @property
    def running(self) -> dict[str, JobRow]:
        return {role: job for role, job in self.jobs.items() if role in self.missing and job.active}

    @property
    def failed(self) -> dict[str, JobRow]:
        return {role: job for role, job in self.jobs.items() if role in self.missing and job.status in ("error", "cancelled")}

    @property
    def cost(self) -> int:
        """Patched runs the missing ones need (those not already running)."""
        return sum(p.total for p in self.plans.values())

    @property
    def progress(self) -> tuple[int, int]:
        jobs = self.running.values()
        return sum(j.done for j in jobs), sum(j.total for j in jobs)


def gather(service: ExperimentService, result: PatchResult, specs: dict[str, SpecBase]) -> Companions:
    """What is stored for each companion, the jobs computing the others, and what the rest would cost."""
    out = Companions(specs)
    for role, spec in specs.items():
        if spec.id == result.id:
            out.runs[role] = result
            continue
        stored = service.store.get(spec.id)
        if stored is not None:
            out.runs[role] = stored.result
    ids = {spec.id: role for role, spec in out.missing.items()}
    for job_id, job in service.jobs.store.get_many(ids).items():
        out.jobs[ids[job_id]] = job
    for role, spec in list(out.missing.items()):
        if role in out.running:
            continue
        try:
            out.plans[role] = service.price(spec)
        except InputError as exc:
            if role in REQUIRED_ROLES:
                out.problem = str(exc)
            else:
                out.unavailable[role] = str(exc)
                del out.specs[role]
    return out


def compute(service: ExperimentService, result: PatchResult, specs: dict[str, SpecBase], client: str) -> Companions:
    """Compute the missing companions: in this request when small, else as background jobs."""
    companions = gather(service, result, specs)
    if companions.problem:
        raise InputError(companions.problem, field="spec")
    # filed under this run before they exist, so lists group them (and their jobs) under it
    service.store.link_companions(result.id, {role: spec.id for role, spec in companions.missing.items()})
    service.submit_priced(companions.plans, client)
    return gather(service, result, specs)


def panel(service: ExperimentService, companions: Companions, url: str, target: str, swap: str, what: str) -> dict[str, Any]:
    """What the companion-runs box (``_companions.html``) shows: nothing missing, jobs running, or a
    button that POSTs to ``url`` (GET ``url`` is what the box polls while jobs run)."""
    done, total = companions.progress
    return {"companions": companions, "url": url, "target": target, "swap": swap, "what": what, "done": done, "total": total,
            "labels": [ROLE_LABELS.get(role, role) for role in companions.missing],
            "background": companions.cost > service.settings.background_patched_runs}
