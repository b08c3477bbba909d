"""The allow-listed models of a server or a worker, loaded while it runs, within a memory budget.

Each allow-listed model (``Settings.models``) is in one state: **loaded**, **loading** (with the
phase it is in and the seconds since it started), **not loaded**, or **unavailable** (with a plain
reason: the log keeps the exception, which may name paths). The models of
``Settings.models_at_start`` load when the process starts (all of them unless set); any other loads
on request (``POST /api/models/{name}/load``, the page's Load button) or when a job needs it (the
job's worker loads it and waits). Loads run one at a time, in a background thread.

The memory budget (``Settings.model_memory_mb``, in MB of 10^6 bytes) counts each loaded model's
parameter and buffer bytes (``model_bytes``: numel x element size of every parameter and buffer;
activations, the tokenizer and Python objects are not counted). A model's size is known once it
has loaded in this process: before a reload the least recently used models are unloaded to make
room first; a first load is measured once the weights are in memory, and the least recently used
models are unloaded then (so memory may briefly hold the new model on top of the budget). "Used"
means a run or a job computed on the model, or a page shown for it.

A model with a running job (or a run being computed in a request) is never unloaded under it: the
load that needs its room waits until it is idle (its phase says which model it waits for). An
unload asked for by hand is refused (409) while the model is busy.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from patchstudio.engine.families import check_families
from patchstudio.engine.precision import dtype_name, model_dtype
from patchstudio.errors import InputError
from patchstudio.models import prompts as P
from patchstudio.models.default_model import BUILTIN_MODELS
from patchstudio.models.registry import describe_model, download_command, format_params, load_model, model_fingerprint
from patchstudio.models.tracr import TRACR_MODELS
from patchstudio.settings import Settings

log = logging.getLogger("patchstudio")

LOADED, LOADING, NOT_LOADED, UNAVAILABLE = "loaded", "loading", "not loaded", "unavailable"
SMALL_VOCABULARY = 2_000  # a vocabulary up to this size is listed in the page as help
MB = 1_000_000


@dataclass
class LoadedModel:
    name: str
    model: Any = None
    fingerprint: str = ""
    error: str | None = None  # for the log only: it may hold paths
    vocabulary: dict[str, list[str]] | None = None  # small (word-level) vocabularies, grouped, for help
    info: dict[str, Any] = field(default_factory=dict)  # registry.describe_model: architecture, size
    dtype: str = "float32"
    state: str = NOT_LOADED
    phase: str = ""  # what a loading model is doing now
    started: float | None = None  # time.monotonic() when its load began
    reason: str | None = None  # why it is unavailable, in plain words (no paths)
    bytes: int = 0  # parameters and buffers, once loaded
    last_used: int = 0  # a tick of the manager's counter: the least recently used has the smallest
    busy: int = 0  # runs and jobs computing on it now

    @property
    def computation(self) -> str:
        """What this model computes, as a job records it: "<dtype>:<weights sha256>"."""
        return f"{self.dtype}:{self.fingerprint}"

    @property
    def label(self) -> str:
        """The model picker's text: name, architecture and size, or that it is not loaded."""
        if self.model is None:
            return f"{self.name} (loading)" if self.state == LOADING else f"{self.name} (not loaded)"
        arch, n = self.info.get("architecture"), self.info.get("n_params")
        size = f", {format_params(n)} params" if n else ""
        return f"{self.name} ({arch}{size})" if arch else self.name

    @property
    def seconds(self) -> float | None:
        return None if self.started is None else time.monotonic() - self.started


class ModelNotReady(InputError):
    """A request for a model that is loading (503: ask again shortly) or not loaded (409: load it
    first), or an unload of a model that is busy or loading (409)."""

    def __init__(self, message: str, status: int):
        super().__init__(message, field="model")
        self.status = status


def vocabulary_groups(model) -> dict[str, list[str]] | None:
    """The words a small word-level vocabulary knows, grouped as names, places, objects and the rest
    (from the built-in generator's lists); None for a large (subword) vocabulary."""
    tokenizer = model.tokenizer
    if len(tokenizer) > SMALL_VOCABULARY:
        return None
    special = set(tokenizer.all_special_tokens)
    words = [w for w, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if w not in special]
    groups = {"names": set(P.NAMES), "places": set(P.PLACES), "objects": set(P.OBJECTS)}
    out = {name: [w for w in words if w in members] for name, members in groups.items()}
    out["other words"] = [w for w in words if not any(w in m for m in groups.values())]
    return out


def model_bytes(model) -> int:
    """A model's memory as the budget counts it: the bytes of its parameters and buffers."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def megabytes(n: int | float | None) -> float | None:
    return None if n is None else round(n / MB, 3)


def plain_reason(name: str) -> str:
    """Why a model could not load, without the exception's text (it may name paths)."""
    if name in BUILTIN_MODELS or name in TRACR_MODELS:
        return (f"the built-in model {name!r} has no usable weights in this installation (the server's log says why); "
                f"`patchstudio train-default --model {name}` trains them")
    return (f"its weights could not be loaded (the server's log says why; if they are not downloaded, whoever runs the "
            f"server can fetch them with `{download_command(name)}`)")


class ModelManager:
    """The allow-listed models and their states, behind one lock (see the module docstring)."""

    def __init__(self, settings: Settings, loader: Callable[[str], Any] | None = None):
        self.settings = settings
        self.budget = None if settings.model_memory_mb is None else int(settings.model_memory_mb * MB)
        self._loader = loader or (lambda n: load_model(n, device=settings.device, dtype=settings.dtype))
        self._cond = threading.Condition()
        self._one_load = threading.Lock()  # loads run one at a time: two at once would double the peak
        self._tick = itertools.count(1)
        self._sizes: dict[str, int] = {}  # bytes measured at a model's last load in this process
        self.entries: dict[str, LoadedModel] = {name: LoadedModel(name) for name in settings.models}

    # --- reading ---

    def states(self) -> list[dict[str, Any]]:
        """Every allow-listed model's state, for the picker and ``GET /api/models`` (reads only)."""
        with self._cond:
            return [self._describe(e) for e in self.entries.values()]

    def state(self, name: str) -> dict[str, Any]:
        with self._cond:
            return self._describe(self._entry(name, "name"))

    def _describe(self, e: LoadedModel) -> dict[str, Any]:
        seconds = e.seconds if e.state == LOADING else None
        return {"name": e.name, "state": e.state, "label": e.label, "phase": e.phase if e.state == LOADING else None,
                "seconds": None if seconds is None else round(seconds, 1), "reason": e.reason,
                "memory_mb": megabytes(e.bytes) if e.state == LOADED else None, "busy": e.busy}

    def used_bytes(self) -> int:
        with self._cond:
            return sum(e.bytes for e in self.entries.values() if e.state == LOADED)

    def _entry(self, name: str, field_name: str = "model") -> LoadedModel:
        entry = self.entries.get(name)
        if entry is None:
            offered = ", ".join(self.entries)
            raise InputError(f"unknown model {str(name)[:100]!r}: this server offers {offered}", field=field_name)
        return entry

    # --- requests: the model as it is now, never loading it ---

    def get(self, name: str) -> LoadedModel:
        """A loaded model, marked used; else a refusal that names it: unknown or unavailable (422),
        loading (503), not loaded (409)."""
        with self._cond:
            entry = self._ready(name)
            entry.last_used = next(self._tick)
            return entry

    def _ready(self, name: str) -> LoadedModel:
        entry = self._entry(name)
        if entry.state == LOADED:
            return entry
        if entry.state == LOADING:
            raise ModelNotReady(f"model {name!r} is loading ({entry.phase}, {entry.seconds or 0:.0f} s so far); "
                                f"ask again in a few seconds", 503)
        if entry.state == UNAVAILABLE:
            raise InputError(f"model {name!r} is not available on this server: {entry.reason}", field="model")
        raise ModelNotReady(f"model {name!r} is not loaded on this server now; load it from the model picker "
                            f"(or POST /api/models/{name}/load), then ask again", 409)

    def touch(self, name: str) -> None:
        """A page shown for ``name``: it counts as a use (nothing loads)."""
        with self._cond:
            entry = self.entries.get(name)
            if entry is not None and entry.state == LOADED:
                entry.last_used = next(self._tick)

    @contextlib.contextmanager
    def using(self, name: str, *, load: bool = False) -> Iterator[LoadedModel]:
        """The model, held busy (never unloaded) while the block runs. ``load``: a worker's job; a
        model not loaded is loaded now and waited for (the same budget rule), one loading is waited for."""
        with self._cond:
            while True:
                entry = self._entry(name)
                if not load or entry.state in (LOADED, UNAVAILABLE):
                    entry = self._ready(name)
                    break
                if entry.state == NOT_LOADED:
                    self._start(entry)
                self._cond.wait(timeout=1.0)
            entry.busy += 1
            entry.last_used = next(self._tick)
        try:
            yield entry
        finally:
            with self._cond:
                entry.busy -= 1
                entry.last_used = next(self._tick)
                self._cond.notify_all()

    # --- loading and unloading ---

    def load(self, name: str) -> dict[str, Any]:
        """Start loading ``name`` in the background (nothing to do when it is loaded or loading; an
        unavailable model is tried again); its state."""
        with self._cond:
            entry = self._entry(name, "name")
            if entry.state in (NOT_LOADED, UNAVAILABLE):
                self._start(entry)
            return self._describe(self.entries[name])

    def load_now(self, names: list[str]) -> None:
        """Load ``names`` in this thread, in order (a process's start)."""
        for name in names:
            with self._cond:
                entry = self._entry(name)
                if entry.state == LOADED:
                    continue
                self._mark_loading(entry)
            self._load(name)

    def wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait until ``name`` is no longer loading (tests, scripts); its state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            entry = self._entry(name, "name")
            while entry.state == LOADING and (deadline is None or time.monotonic() < deadline):
                self._cond.wait(timeout=0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic())))
                entry = self.entries[name]
            return self._describe(entry)

    def unload(self, name: str) -> dict[str, Any]:
        """Unload ``name`` now; refused (409) while it is loading or a run or job computes on it."""
        with self._cond:
            entry = self._entry(name, "name")
            if entry.state == LOADING:
                raise ModelNotReady(f"model {name!r} is loading; unload it once it has loaded", 409)
            if entry.busy:
                raise ModelNotReady(f"model {name!r} is computing a run or job now; unload it when it is idle", 409)
            if entry.state == LOADED:
                self._drop(entry, "asked for")
            return self._describe(self.entries[name])

    def _mark_loading(self, entry: LoadedModel) -> None:
        fresh = LoadedModel(entry.name, state=LOADING, phase="starting", started=time.monotonic())
        self.entries[entry.name] = fresh
        self._cond.notify_all()

    def _start(self, entry: LoadedModel) -> None:
        """(Under the lock.) The model is loading from now on, in a background thread."""
        self._mark_loading(entry)
        threading.Thread(target=self._load, args=(entry.name,), name=f"patchstudio-load-{entry.name}", daemon=True).start()

    def _phase(self, name: str, phase: str) -> None:
        with self._cond:
            self.entries[name].phase = phase
            self._cond.notify_all()

    def _load(self, name: str) -> None:
        """Load one model (its entry says loading); any failure makes it unavailable, never a crash."""
        if not self._one_load.acquire(blocking=False):
            self._phase(name, "waiting for another model to finish loading")
            self._one_load.acquire()
        try:
            self._make_room(name, self._sizes.get(name))
            self._phase(name, "reading weights")
            model = self._loader(name)
            self._phase(name, "fingerprinting weights")
            loaded = LoadedModel(name, model, model_fingerprint(model), vocabulary=vocabulary_groups(model),
                                 info=describe_model(model), dtype=dtype_name(model_dtype(model)),
                                 bytes=model_bytes(model), state=LOADED)
            self._phase(name, "checking the prompt families on its tokenizer")
            check_families(model)  # once per tokenizer, here, so that pages and GETs only read it
            self._sizes[name] = loaded.bytes
            if self.budget is not None and loaded.bytes > self.budget:
                self._fail(name, f"it needs {loaded.bytes / MB:.1f} MB of parameters and buffers, more than this "
                                 f"server's whole model memory budget ({self.budget / MB:.1f} MB, PATCHSTUDIO_MODEL_MEMORY_MB)")
                return
            self._make_room(name, loaded.bytes)
            with self._cond:
                loaded.last_used = next(self._tick)
                self.entries[name] = loaded
                self._cond.notify_all()
            log.info("loaded model %s (%.1f MB)", name, loaded.bytes / MB)
        except Exception as exc:  # a model that cannot load is reported, in plain words, as unavailable
            log.warning("model %s unavailable: %s", name, exc, exc_info=not isinstance(exc, (OSError, RuntimeError)))
            self._fail(name, plain_reason(name), error=str(exc))
        finally:
            self._one_load.release()

    def _fail(self, name: str, reason: str, error: str | None = None) -> None:
        with self._cond:
            self.entries[name] = LoadedModel(name, state=UNAVAILABLE, reason=reason, error=error or reason)
            self._cond.notify_all()

    def _make_room(self, name: str, need: int | None) -> None:
        """Unload least recently used idle models until ``need`` more bytes fit the budget; while
        only busy models could make room, wait for them."""
        if self.budget is None or need is None:
            return
        with self._cond:
            while True:
                others = [e for e in self.entries.values() if e.state == LOADED and e.name != name]
                if sum(e.bytes for e in others) + need <= self.budget:
                    return
                idle = [e for e in others if e.busy == 0]
                if idle:
                    victim = min(idle, key=lambda e: e.last_used)
                    self._drop(victim, f"to make room for {name} within the {self.budget / MB:.1f} MB budget")
                    continue
                busy = ", ".join(sorted(e.name for e in others))
                self.entries[name].phase = f"waiting for the run or job on {busy} to finish, to unload it within the budget"
                self._cond.notify_all()
                self._cond.wait(timeout=1.0)

    def _drop(self, entry: LoadedModel, why: str) -> None:
        """(Under the lock.) Forget the model: its memory goes once the last computation holding it ends."""
        self.entries[entry.name] = LoadedModel(entry.name)
        self._cond.notify_all()
        log.info("unloaded model %s (%.1f MB): %s", entry.name, entry.bytes / MB, why)
