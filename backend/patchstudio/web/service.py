"""Experiments for the web layer: allow-listed models, cost checks, store-first computation.

Web -> store -> engine: pages and the API call this; it calls the store and the engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from patchstudio.engine.run import plan, run
from patchstudio.errors import InputError
from patchstudio.models.registry import (
    ModelUnavailableError,
    describe_model,
    format_params,
    load_model,
    model_fingerprint,
)
from patchstudio.settings import Settings
from patchstudio.specs import parse_spec
from patchstudio.store import Store, StoredRun

log = logging.getLogger("patchstudio")


@dataclass
class LoadedModel:
    name: str
    model: Any = None
    fingerprint: str = ""
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # registry.describe_model: architecture, size

    @property
    def label(self) -> str:
        """The model picker's text: name, architecture and size, or that it did not load."""
        if self.model is None:
            return f"{self.name} (not loaded)"
        arch, n = self.info.get("architecture"), self.info.get("n_params")
        size = f", {format_params(n)} params" if n else ""
        return f"{self.name} ({arch}{size})" if arch else self.name


@dataclass
class ExperimentService:
    settings: Settings
    store: Store
    models: dict[str, LoadedModel] = field(default_factory=dict)

    def load_models(self, loader: Callable[[str], Any] | None = None) -> None:
        """Load every allow-listed model once. A model that cannot load is kept with its message,
        so requests for it get that message instead of a traceback."""
        for name in self.settings.models:
            try:
                settings = self.settings
                model = (loader or (lambda n: load_model(n, device=settings.device, dtype=settings.dtype)))(name)
                self.models[name] = LoadedModel(name, model, model_fingerprint(model), info=describe_model(model))
                log.info("loaded model %s", name)
            except (ModelUnavailableError, FileNotFoundError) as exc:
                self.models[name] = LoadedModel(name, error=str(exc))
                log.warning("model %s unavailable: %s", name, exc)

    @property
    def ready(self) -> bool:
        return any(m.model is not None for m in self.models.values())

    def model(self, name: str) -> LoadedModel:
        loaded = self.models.get(name)
        if loaded is None:
            offered = ", ".join(self.settings.models)
            raise InputError(f"unknown model {name!r}: this server offers {offered}", field="model")
        if loaded.model is None:
            raise InputError(loaded.error or f"model {name!r} is not loaded", field="model")
        return loaded

    def cost(self, spec: Any) -> int:
        """Patched runs the spec needs; checks the prompts and the budget (raises InputError on bad input)."""
        spec = parse_spec(spec)
        checked = plan(self.model(spec.model).model, spec)
        checked.check_budget(self.settings.max_patched_runs)
        return checked.total

    def get_or_run(self, spec: Any, progress: Callable[[int, int], None] | None = None) -> StoredRun:
        """The stored result for this spec, computing and storing it first if needed."""
        spec = parse_spec(spec)
        stored = self.store.get(spec.id)
        if stored is not None:
            return stored
        loaded = self.model(spec.model)
        result = run(
            loaded.model,
            spec,
            model_name=loaded.name,
            chunk_rows=self.settings.chunk_rows,
            max_patched_runs=self.settings.max_patched_runs,
            progress=progress,
        )
        return self.store.put(result, loaded.fingerprint)
