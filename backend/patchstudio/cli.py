"""Command line: ``patchstudio serve``, ``patchstudio worker``, ``patchstudio run spec.json``,
``patchstudio families``, ``patchstudio train-default``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from patchstudio.errors import describe, field_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Patch Studio: causal interventions on transformers.")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command("run")
def run_command(
    spec_file: str = typer.Argument(..., help="Experiment spec JSON file ('-' reads standard input)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result JSON here instead of stdout."),
    chunk_rows: Optional[int] = typer.Option(
        None, help="Most patched rows per forward pass (default: 256 on CPU, what fits in free memory on CUDA)."
    ),
    device: Optional[str] = typer.Option(None, help="torch device (default: PATCHSTUDIO_DEVICE, else cpu)."),
    dtype: Optional[str] = typer.Option(
        None, help="float32, bfloat16 or float16 (default: PATCHSTUDIO_DTYPE, else float32)."
    ),
    max_patched_runs: Optional[int] = typer.Option(None, help="Refuse sweeps needing more patched runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run an experiment spec and print the result as JSON."""
    from tqdm import tqdm

    import patchstudio
    from patchstudio.engine.allocator import keep_freed_memory
    from patchstudio.engine.inputs import InputError
    from patchstudio.models.registry import DTYPES, ModelUnavailableError
    from patchstudio.settings import Settings
    from patchstudio.specs import parse_spec

    try:
        text = sys.stdin.read() if spec_file == "-" else Path(spec_file).read_text()
    except OSError as exc:
        _fail(f"cannot read {spec_file}: {exc.strerror}")
    try:
        spec = parse_spec(json.loads(text))
    except json.JSONDecodeError as exc:
        _fail(f"{spec_file} is not valid JSON: {exc}")
    except ValidationError as exc:
        _fail(f"invalid spec: {describe(field_errors(exc))}")

    if dtype is not None and dtype not in DTYPES:
        _fail(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if device is None or dtype is None or chunk_rows is None:
        settings = Settings()
        device, dtype = device or settings.device, dtype or settings.dtype
        chunk_rows = chunk_rows if chunk_rows is not None else settings.chunk_rows

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="patch", file=sys.stderr, desc=f"{spec.method} {spec.component}")
        bar.update(done - bar.n)

    keep_freed_memory()
    try:
        model = patchstudio.load_model(spec.model, device=device, dtype=dtype)
        result = patchstudio.run(spec, model=model, chunk_rows=chunk_rows, max_patched_runs=max_patched_runs, progress=progress)
    except (InputError, ModelUnavailableError, FileNotFoundError) as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.close()
    payload = result.model_dump_json(indent=2)
    if out is None:
        typer.echo(payload)
    else:
        out.write_text(payload + "\n")
        typer.echo(f"wrote {out} (id {result.id})", err=True)


@app.command("families")
def families_command(
    model: str = typer.Option("default", help="The model whose tokenizer the families are checked on."),
    family: Optional[str] = typer.Option(None, help="Print this family's pairs as JSON lines (a prompt set to upload)."),
    n: int = typer.Option(16, min=1, max=10_000, help="How many pairs."),
    seed: int = typer.Option(0, min=0, help="The generator's seed."),
) -> None:
    """List the built-in prompt families the model's tokenizer can make (and why not the others), or
    print one family's pairs."""
    import patchstudio
    from patchstudio.engine.families import check_families, family_pairs
    from patchstudio.engine.inputs import InputError
    from patchstudio.models.prompts import FAMILIES
    from patchstudio.models.registry import ModelUnavailableError

    try:
        loaded = patchstudio.load_model(model)
    except (ModelUnavailableError, FileNotFoundError) as exc:
        _fail(str(exc))
    if family is not None:
        try:
            pairs = family_pairs(loaded, family, n, seed=seed)
        except InputError as exc:
            _fail(str(exc))
        for pair in pairs:
            typer.echo(json.dumps(pair.to_dict()))
        return
    for name, check in check_families(loaded).items():
        if check.offered:
            typer.echo(f"{name}: offered. {FAMILIES[name].note}\n")
        else:
            typer.echo(f"{name}: not offered: {check.refusal}\n")


LOADER_HELP = ("Load models with this function instead of by name: 'module:function', called with a model name "
               "(for tests and custom setups; the allow-list still decides which names exist).")


def _loader(spec: Optional[str]):
    if not spec:
        return None
    import importlib

    module, _, function = spec.partition(":")
    if not module or not function:
        _fail(f"--model-loader must look like 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        _fail(f"cannot import the model loader {spec!r}: {exc}")


def _settings():
    from patchstudio.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        _fail(f"invalid settings: {describe(field_errors(exc))}")


@app.command("serve")
def serve_command(
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default 127.0.0.1, or PATCHSTUDIO_HOST)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000, or PATCHSTUDIO_PORT)."),
    model_loader: Optional[str] = typer.Option(None, help=LOADER_HELP),
) -> None:
    """Start the web app: loads the allowed models once, then serves the explorer and the JSON API.
    On SQLite it also runs background jobs in worker threads; on PostgreSQL start `patchstudio worker`s."""
    import uvicorn

    from patchstudio.store import DatabaseMissing
    from patchstudio.web.app import create_app

    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    at_start = settings.start_models()
    typer.echo(f"Patch Studio: loading {', '.join(at_start) if at_start else 'no model yet (the page loads them)'}; "
               f"then open http://{shown}:{port}/", err=True)
    # Proxy headers only from the configured proxies: uvicorn's own default trusts 127.0.0.1, so a
    # local client could pick its own address (and dodge per-address caps) with X-Forwarded-For.
    proxies = settings.forwarded_allow_ips
    try:
        uvicorn.run(create_app(settings, model_loader=_loader(model_loader)), host=host, port=port, log_level="info",
                    proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    except DatabaseMissing as exc:
        _fail(str(exc))


@app.command("worker")
def worker_command(
    models: Optional[str] = typer.Option(None, help="Comma-separated models this worker runs (default: PATCHSTUDIO_MODELS)."),
    concurrency: int = typer.Option(1, min=1, help="Jobs at once (each holds the model's lock per forward pass)."),
    model_loader: Optional[str] = typer.Option(None, help=LOADER_HELP),
) -> None:
    """Run background jobs: one queue per model; loads the models of PATCHSTUDIO_MODELS_AT_START (all unless set)
    now and any other on its first job, within PATCHSTUDIO_MODEL_MEMORY_MB, then takes jobs from the database's
    queue until stopped (SIGINT or SIGTERM). Start as many as you like, on any machine that reaches the database."""
    import logging

    from patchstudio.jobs import open_queue
    from patchstudio.model_manager import LOADED, UNAVAILABLE
    from patchstudio.service import ExperimentService
    from patchstudio.store import DatabaseMissing, Store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings()
    names = [m.strip() for m in (models or ",".join(settings.models)).split(",") if m.strip()]
    unknown = [m for m in names if m not in settings.models]
    if unknown:
        _fail(f"not in this server's allow-list (PATCHSTUDIO_MODELS): {', '.join(unknown)}")
    try:
        store = Store(settings.resolved_database_url(), create=settings.create_db)
    except DatabaseMissing as exc:
        _fail(str(exc))
    service = ExperimentService(settings, store)
    # the models of PATCHSTUDIO_MODELS_AT_START (all unless set) load now; the others on their first job
    service.load_models(_loader(model_loader), names=[m for m in names if m in settings.start_models()])
    runnable = [m for m in names if service.models[m].state != UNAVAILABLE]
    if not runnable:
        _fail(f"none of {', '.join(names)} could be loaded (see the log above)")

    queue = open_queue(settings, store, service.get_or_run, runnable)
    lazy = [m for m in runnable if service.models[m].state != LOADED]
    typer.echo(f"Patch Studio worker: {', '.join(runnable)} ({queue.kind} queue)"
               + (f"; loads {', '.join(lazy)} on its first job" if lazy else ""), err=True)
    code = queue.run_worker(concurrency)
    if code:  # it lost the database or its place in the queue: its supervisor restarts it
        raise typer.Exit(code=code)


@app.command("train-default")
def train_default_command(
    model: str = typer.Option("default", help="Which built-in model to retrain: default, hydra or all "
                                              "(hydra: the default model fine-tuned with a backup head, docs/self-repair.md)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: the package's shipped model(s)); "
                                                  "with --model all, one subdirectory per model."),
    seed: Optional[int] = typer.Option(None, help="Training seed (default: the recipe's, which reproduces the shipped weights)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Training steps (default: the recipe's)."),
    eval_only: bool = typer.Option(False, "--eval-only", help="Train nothing: re-measure the saved model(s) and rewrite "
                                                              "metrics.json and CARD.md."),
    card_only: bool = typer.Option(False, "--card-only", help="Train and measure nothing: rewrite CARD.md from the "
                                                              "saved metrics.json (after editing a card template)."),
) -> None:
    """Retrain shipped built-in models from their recipes (the default model: about 7 minutes on 2 CPU cores, hydra 9 more) and say whether each reproduced the shipped weights bit for bit (it does in the environment its card records)."""
    from patchstudio.models.training import RECIPES, render_card, train_all, train_builtin, write_report

    if model != "all" and model not in RECIPES:
        _fail(f"unknown built-in model {model!r}: choose from {', '.join([*RECIPES, 'all'])}")
    if eval_only or card_only:
        if eval_only and card_only:
            _fail("--eval-only and --card-only: choose one")
        for name in list(RECIPES) if model == "all" else [model]:
            directory = RECIPES[name].directory if out is None else out / name if model == "all" else out
            if card_only:
                (directory / "CARD.md").write_text(render_card(json.loads((directory / "metrics.json").read_text()), name))
                typer.echo(f"wrote {directory / 'CARD.md'}", err=True)
            else:
                metrics = write_report(directory, recipe=name)
                typer.echo(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
        return
    if model == "all":
        if seed is not None or steps is not None:
            _fail("--seed and --steps need a single --model")
        metrics = train_all(out)
    else:
        metrics = train_builtin(model, out_dir=out, seed=seed, steps=steps)
    typer.echo(json.dumps(metrics, indent=2))


if __name__ == "__main__":  # pragma: no cover
    app()
