"""Experiments for a server or a worker: allow-listed models, limits, prices, and the one submit rule.

Web and jobs -> service -> store, jobs and engine: pages, the API and the job workers call this; it
calls the store, the job queue and the engine. ``submit`` is the rule every way in (the API, the form,
companion runs) follows: the stored run if there is one, else the spec is parsed once, checked against
the limits once, priced once (``engine.run.plan``) and computed now with that plan when it is small, or
queued as a background job when it is not. Limits are checked on the raw request data, before parsing
or tokenizing, so an oversized request is refused in constant time and memory.

One id, one computation: a stored run records the weights (their sha256) and the dtype that
computed it. A server whose model differs never answers a submit with that record as if it were
its own, nor stores a different one under the same id: it refuses (``OtherComputation``, 409)
and the run's page says so. A job carries its server's computation, and a worker whose model
differs refuses it. Only the client that started a job may cancel it (``NotYourJob``).

Models load and unload while the process runs (``model_manager``): a request for a model that is not
loaded is refused with its state (``ModelNotReady``), while a job's worker loads the model it needs,
within the memory budget, and compares the job's computation with the weights it loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from patchstudio.engine.attention import layer_patterns
from patchstudio.engine.run import Plan, plan, run
from patchstudio.errors import InputError, check_text
from patchstudio.jobs import JobQueue
from patchstudio.model_manager import LOADED, UNAVAILABLE, LoadedModel, ModelManager
from patchstudio.prompt_sets import Format, PromptSet, check_on_model, fill_prompts, parse_prompt_set
from patchstudio.settings import Settings
from patchstudio.specs import SpecBase, parse_spec
from patchstudio.jobs.store import JobRow
from patchstudio.store import Store, StoredRun

log = logging.getLogger("patchstudio")


class OtherComputation(InputError):
    """A stored run or a job for this id comes from another computation (other weights or another
    dtype) than this server's (or this worker's) model: 409, never its numbers as this server's."""


class NotYourJob(PermissionError):
    """Only the client that started a job may cancel it: 403."""


PROMPT_TEXT_FIELDS = ("clean", "corrupted", "answer", "wrong")


def check_strings(data: Any, path: str = "") -> None:
    """Every string anywhere in a request must be valid Unicode (no lone surrogates, no NUL)."""
    if isinstance(data, str):
        check_text(data, path or "spec")
    elif isinstance(data, Mapping):
        for key, value in data.items():
            check_strings(key, path or "spec")
            check_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_strings(value, f"{path}.{i}" if path else str(i))


def owns(job: JobRow, client: str) -> bool:
    """Whether ``client`` started ``job``: the same key, or the job was keyed by the address the
    request comes from (a client's first request carries no cookie yet, so its first job is keyed by
    its address; the cookie the answer sets must not lock it out of its own job)."""
    address = getattr(client, "address", None)
    return job.client == client or (address is not None and job.client == f"a:{address}")


@dataclass
class ExperimentService:
    settings: Settings
    store: Store
    jobs: JobQueue | None = None  # where large experiments go; set by whoever runs the queue (the web app's lifespan)
    manager: ModelManager = field(init=False)  # the allow-listed models and their states (model_manager.py)

    def __post_init__(self) -> None:
        self.manager = ModelManager(self.settings)

    @property
    def models(self) -> dict[str, LoadedModel]:
        """Every allow-listed model by name, loaded or not (``LoadedModel.state`` says which)."""
        return self.manager.entries

    def load_models(self, loader: Callable[[str], Any] | None = None, names: list[str] | None = None) -> None:
        """Load the models of ``Settings.models_at_start`` (all of the allow-list unless set), or
        ``names``, now and in order; ``loader`` replaces loading by name (tests, custom setups). A model
        that cannot load is kept as unavailable with a plain reason; requests for it get a refusal
        instead of a traceback. The others load while the process runs (``manager.load``)."""
        if loader is not None:
            self.manager = ModelManager(self.settings, loader)
        self.manager.load_now(self.settings.start_models() if names is None else names)

    @property
    def ready(self) -> bool:
        """A model is loaded, or none was to load at start and one still may."""
        states = [m.state for m in self.models.values()]
        return LOADED in states or (not self.settings.start_models() and any(s != UNAVAILABLE for s in states))

    def check_limits(self, data: Any) -> None:
        """The server's limits on a raw spec (a dict from JSON or the form), before parsing: the
        number of prompt pairs, each text's length, and valid Unicode everywhere."""
        if not isinstance(data, Mapping):
            return  # parse_spec names the problem
        prompts = data.get("prompts")
        if isinstance(prompts, list):
            if len(prompts) > self.settings.max_prompts:
                raise InputError(
                    f"{len(prompts):,} prompt pairs; this server takes at most {self.settings.max_prompts:,} per experiment "
                    "(PATCHSTUDIO_MAX_PROMPTS)",
                    field="prompts",
                )
            for i, pair in enumerate(prompts):
                if isinstance(pair, Mapping):
                    for name in PROMPT_TEXT_FIELDS:
                        if isinstance(pair.get(name), str):
                            check_text(pair[name], f"prompts.{i}.{name}", self.settings.max_prompt_chars)
        check_strings(data)

    def parse(self, data: Any) -> SpecBase:
        """A spec from request data: the server's limits first, then the spec's own validation
        (a ValidationError or InputError names the field). A spec built elsewhere (the form's) is
        held to the same limits. Data naming a stored prompt set gets the set's pairs as its prompts."""
        if isinstance(data, Mapping):
            data = fill_prompts(data, self.store.get_prompt_set)
        elif isinstance(data, SpecBase) and data.prompt_set is not None:  # the form's: its prompts must be the set's
            dumped = data.model_dump(mode="json")
            if (filled := fill_prompts(dumped, self.store.get_prompt_set)) is not dumped:
                data = parse_spec(filled)  # the set's role columns go with its pairs
        self.check_limits(data.model_dump(mode="json") if isinstance(data, SpecBase) else data)
        return data if isinstance(data, SpecBase) else parse_spec(data)

    def add_prompt_set(self, data: str | bytes, fmt: Format, model: str | None = None) -> tuple[PromptSet, list[dict], bool]:
        """An uploaded set parsed, every row checked on ``model`` (the first offered by default) and
        stored once; with each row's tokens and whether this call stored it. A PromptSetError names
        every bad row, and then nothing is stored."""
        prompt_set = parse_prompt_set(data, fmt, max_chars=self.settings.max_prompt_chars)
        tokens = check_on_model(self.model(model or self.settings.models[0]).model, prompt_set)
        return prompt_set, tokens, self.store.put_prompt_set(prompt_set)

    def model(self, name: str) -> LoadedModel:
        """The loaded model ``name`` (a use, for the least-recently-used rule); refused, naming it,
        when it is unknown or unavailable (422), loading (503) or not loaded (409)."""
        return self.manager.get(name)

    def price(self, spec: SpecBase) -> Plan:
        """The spec checked and tokenized on its model, with its cost in patched runs; refused
        (InputError) on bad prompts or over the budget. ``run`` takes this plan as it is."""
        checked = plan(self.model(spec.model).model, spec)
        checked.check_budget(self.settings.max_patched_runs)
        return checked

    def submit(self, spec: Any, client: str) -> StoredRun | JobRow:
        """The one submit rule: the stored run for this spec, else the spec computed now when its
        cost is within ``background_patched_runs``, else its background job (TooManyJobs over the
        client's cap)."""
        parsed = self.parse(spec)
        stored = self.store.get(parsed.id)
        if stored is not None:
            return self._own(stored)
        return self.submit_priced({parsed.id: self.price(parsed)}, client)[parsed.id]

    def submit_priced(self, plans: Mapping[str, Plan], client: str) -> dict[str, StoredRun | JobRow]:
        """The submit rule for priced specs that belong together (a run's companions): all computed
        now when their cost together is within ``background_patched_runs``, else all queued."""
        if sum(p.total for p in plans.values()) <= self.settings.background_patched_runs:
            return {key: self._compute(p) for key, p in plans.items()}
        return {key: self.enqueue(p.spec, client, p) for key, p in plans.items()}

    def enqueue(self, spec: Any, client: str, priced: Plan | None = None) -> JobRow:
        """A background job for the spec, whatever its size (``POST /api/jobs``): new, or the one
        already queued, running or done for it."""
        parsed = self.parse(spec) if priced is None else priced.spec
        total = (priced or self.price(parsed)).total
        loaded = self.model(parsed.model)
        job = self._queue().submit(parsed, client, total, loaded.computation)
        if job.computation not in (None, loaded.computation):
            raise OtherComputation(self._differs(parsed.id, parsed.model, job.computation, loaded.computation, "queued"),
                                   field="model")
        return job

    def cancel(self, job_id: str, client: str) -> JobRow | None:
        """Cancel a job (None: no such job); NotYourJob unless ``client`` started it."""
        job = self._queue().get(job_id)
        if job is None:
            return None
        if not owns(job, client):
            raise NotYourJob(f"job {job_id} was started by another client: only the client that started a job may cancel it")
        return self._queue().cancel(job_id)

    # --- one id, one computation ---

    @staticmethod
    def _differs(run_id: str, model: str, theirs: str, ours: str, what: str) -> str:
        (their_dtype, their_hash), (our_dtype, our_hash) = theirs.split(":", 1), ours.split(":", 1)
        parts = []
        if their_hash != our_hash:
            parts.append(f"other weights (sha256 {their_hash[:12]}; this server's are {our_hash[:12]})")
        if their_dtype != our_dtype:
            parts.append(f"{their_dtype} (this server computes in {our_dtype})")
        return (f"experiment {run_id} is {what} for another copy of model {model!r}: {' and '.join(parts)}. This server "
                f"will not show or store its own numbers under the same id; use a server whose model matches")

    def computation_note(self, stored: StoredRun) -> str | None:
        """Why ``stored`` is not what this server's model computes (other weights, another dtype), or
        None when it is (or the model is not loaded here, so nothing can be compared)."""
        loaded = self.models.get(stored.model_name)
        if loaded is None or loaded.state != LOADED or loaded.model is None:
            return None
        theirs = f"{stored.result.model.dtype}:{stored.model_fingerprint}"
        if theirs == loaded.computation:
            return None
        return self._differs(stored.id, stored.model_name, theirs, loaded.computation, "stored")

    def _own(self, stored: StoredRun) -> StoredRun:
        """``stored``, if this server's model computed it (else OtherComputation)."""
        note = self.computation_note(stored)
        if note is not None:
            raise OtherComputation(note, field="model")
        return stored

    def _queue(self) -> JobQueue:
        if self.jobs is None:  # a worker's service runs jobs; it never queues them
            raise RuntimeError("this service has no job queue")
        return self.jobs

    def get_or_run(self, spec: Any, progress: Callable[[int, int], None] | None = None,
                   computation: str | None = None) -> StoredRun:
        """The stored result for this spec, computing and storing it first if needed (a job's
        worker). ``computation``: what the job's server asked for; OtherComputation if this
        worker's model differs, or if the stored run came from another computation."""
        spec = parse_spec(spec)
        with self.manager.using(spec.model, load=True) as loaded:  # a job's worker loads its model on demand
            if computation is not None and computation != loaded.computation:
                raise OtherComputation(self._differs(spec.id, spec.model, computation, loaded.computation, "queued"),
                                       field="model")
            stored = self.store.get(spec.id)
            return self._own(stored) if stored is not None else self._run_on(loaded, plan(loaded.model, spec), progress)

    def _compute(self, checked: Plan, progress: Callable[[int, int], None] | None = None) -> StoredRun:
        with self.manager.using(checked.spec.model) as loaded:  # never unloaded while it computes
            return self._run_on(loaded, checked, progress)

    def _run_on(self, loaded: LoadedModel, checked: Plan, progress: Callable[[int, int], None] | None) -> StoredRun:
        result = run(loaded.model, checked.spec, model_name=loaded.name, chunk_rows=self.settings.chunk_rows,
                     max_patched_runs=self.settings.max_patched_runs, progress=progress, checked=checked)
        return self._own(self.store.put(result, loaded.fingerprint))  # a concurrent writer of the same id may have won

    # --- attention patterns of a stored run, one layer at a time ---

    def patterns(self, stored: StoredRun, layer: int) -> dict | None:
        """The stored patterns of a run's layer (None: not computed yet)."""
        return self.store.get_patterns(stored.id, layer)

    def compute_patterns(self, stored: StoredRun, layer: int) -> dict:
        """A run's patterns at ``layer``: stored ones, else computed on its model and stored."""
        data = self.patterns(stored, layer)
        if data is None:
            with self.manager.using(stored.result.spec.model) as loaded:
                data = layer_patterns(loaded.model, stored.result.spec, layer)
            self.store.put_patterns(stored.id, layer, data)
        return data
