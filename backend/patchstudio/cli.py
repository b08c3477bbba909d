"""Command line: ``patchstudio run spec.json``, ``patchstudio train-default``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Patch Studio: causal interventions on transformers.")


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field: 'prompts.0.answer: Field required'."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"] if p not in ("activation_patching", "ablation"))
        lines.append(f"{where or 'spec'}: {err['msg']}")
    return "; ".join(lines)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@app.command("run")
def run_command(
    spec_file: str = typer.Argument(..., help="Experiment spec JSON file ('-' reads standard input)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result JSON here instead of stdout."),
    chunk_rows: int = typer.Option(256, help="Most patched rows per forward pass."),
    max_patched_runs: Optional[int] = typer.Option(None, help="Refuse sweeps needing more patched runs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Run an experiment spec and print the result as JSON."""
    from tqdm import tqdm

    import patchstudio
    from patchstudio.engine.inputs import InputError
    from patchstudio.models.registry import ModelUnavailableError
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
        _fail(f"invalid spec: {describe_validation_error(exc)}")

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(total=total, unit="patch", file=sys.stderr, desc=f"{spec.method} {spec.component}")
        bar.update(done - bar.n)

    try:
        model = patchstudio.load_model(spec.model)
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


@app.command("serve")
def serve_command(
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default 127.0.0.1, or PATCHSTUDIO_HOST)."),
    port: Optional[int] = typer.Option(None, help="Port (default 8000, or PATCHSTUDIO_PORT)."),
) -> None:
    """Start the web app: loads the allowed models once, then serves the explorer and the JSON API."""
    import uvicorn

    from patchstudio.settings import Settings
    from patchstudio.web.app import create_app

    settings = Settings()
    host = host or settings.host
    port = port or settings.port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    typer.echo(f"Patch Studio: loading {', '.join(settings.models)}; then open http://{shown}:{port}/", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command("train-default")
def train_default_command(
    model: str = typer.Option("default", help="Which built-in model to retrain: default, hydra or all "
                                              "(hydra does not meet its bar yet: docs/hydra-notes.md)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: the package's shipped model(s)); "
                                                  "with --model all, one subdirectory per model."),
    seed: Optional[int] = typer.Option(None, help="Training seed (default: the recipe's, which reproduces the shipped weights)."),
) -> None:
    """Retrain shipped built-in models bit for bit from their recipes (the default model: about 10 minutes on 2 CPU cores)."""
    from patchstudio.models import train_default

    if model != "all" and model not in train_default.RECIPES:
        _fail(f"unknown built-in model {model!r}: choose from {', '.join([*train_default.RECIPES, 'all'])}")
    if model == "all":
        if seed is not None:
            _fail("--seed needs a single --model")
        metrics = train_default.train_all(out)
    else:
        metrics = train_default.train_builtin(model, out_dir=out, seed=seed)
    typer.echo(json.dumps(metrics, indent=2))


if __name__ == "__main__":  # pragma: no cover
    app()
