"""Settings from the environment (prefix PATCHSTUDIO_; DATABASE_URL also read bare) or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PATCHSTUDIO_", env_file=".env", extra="ignore")

    models: list[str] = Field(
        default=["default", "hydra"],
        description="Allow-list of model names a server offers (JSON list in the environment). "
        "Requests can only pick these: nothing else is ever loaded from a request.",
    )
    models_at_start: list[str] | None = Field(
        None,
        description="Which allow-listed models load when the server (or a worker) starts (JSON list); unset: all of them. "
        "The others load while it runs: from the page's model picker, POST /api/models/{name}/load, or when a job needs one.",
    )
    model_memory_mb: float | None = Field(
        None,
        gt=0,
        description="Most memory the loaded models may take, in MB (10^6 bytes) of parameters and buffers. Loading past it "
        "first unloads the least recently used model that no run or job is computing on. Unset: no limit.",
    )
    device: str = Field("cpu", description="torch device for the models (cpu, cuda, cuda:1, ...).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="The models' dtype. Half precision (bfloat16, float16) halves memory and is faster on a GPU; "
        "results then carry warnings where an effect is within the dtype's rounding noise.",
    )
    chunk_rows: int | None = Field(
        None,
        ge=1,
        description="Most patched rows per forward pass (bounds memory). Unset: 256 on CPU; on CUDA as many as fit "
        "in half the free device memory.",
    )
    max_patched_runs: int = Field(
        50_000, ge=1, description="Budget: most patched runs (prompts x patches) one experiment may ask for."
    )
    background_patched_runs: int = Field(
        2_000,
        ge=0,
        description="Experiments (and companion runs) needing more patched runs than this run as background jobs, "
        "in the page and from POST /api/runs (which then answers 202 with the job); smaller ones are computed in the request.",
    )
    live_estimate_gflop: float = Field(
        200.0,
        ge=0,
        description="The explore page draws an exact activation-patching sweep first as its attribution-patching "
        "estimate (one gradient pass), then the exact result, when the sweep's naive work (every patched run a full "
        "forward pass, engine.fast.layer_flops) exceeds this many GFLOP: a GPT-2-small head sweep of 16 tokens is "
        "372; the default model's in-request sweeps (at most 2,000 patched runs of at most 64 tokens) are at most 185. "
        "'inf': always exact at once.",
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "PATCHSTUDIO_DATABASE_URL"),
        description="Any SQLAlchemy URL (e.g. postgresql+psycopg://...); default: a SQLite file at db_path.",
    )
    db_path: Path = Field(Path("data/patchstudio.sqlite3"), description="SQLite file used when no DATABASE_URL is set.")
    create_db: bool | None = Field(
        None,
        description="SQLite only. Unset: create the file on a first start (a marker beside it records that), "
        "and refuse to start if it is missing later. 1: create it even then. 0: never create it.",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # --- limits: every refusal is a 4xx naming the field, before any tokenizing ---
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest request body; larger ones get 413.")
    max_prompt_chars: int = Field(2_000, ge=1, description="Longest prompt, answer or wrong answer, in characters.")
    max_prompts: int = Field(256, ge=1, description="Most prompt pairs in one spec.")
    max_jobs_per_client: int = Field(8, ge=1, description="Most queued or running background jobs per client (then 429).")
    max_jobs_per_address: int = Field(
        16, ge=1,
        description="Most queued or running background jobs from one address, whatever cookies it sends (then 429): "
        "a script that makes up a new cookie per request is held here. Behind a proxy, set forwarded_allow_ips, "
        "or everyone shares the proxy's address.",
    )
    max_queued_jobs: int = Field(
        500, ge=1, description="Most background jobs waiting in the whole queue; past it a new job is refused (503) until it drains."
    )
    client_key: Literal["cookie", "address"] = Field(
        "cookie",
        description="Who a client is, for the job cap and who may cancel a job: 'cookie' (a random session cookie the "
        "server sets; clients without one, such as scripts, count by address) or 'address' (the peer address only).",
    )
    forwarded_allow_ips: list[str] = Field(
        default=[],
        description="Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto headers are trusted "
        "(JSON list; '*' for any). Empty (the default): no one's, so a client cannot pick its own address.",
    )

    # --- jobs ---
    local_workers: int = Field(
        1, ge=0, description="SQLite: worker threads in the web process that run background jobs (0: none; run `patchstudio worker`)."
    )
    job_heartbeat_seconds: float = Field(2.0, gt=0, description="How often a running job's worker refreshes its heartbeat.")
    job_stale_seconds: float = Field(
        30.0, gt=0, description="A running job whose heartbeat is older than this is requeued (its worker died); "
        "a PostgreSQL worker that cannot reach the database for this long stops and exits 1."
    )
    job_max_attempts: int = Field(
        3, ge=1, description="A job whose worker died (or lost the database) this many times ends as an error."
    )

    # --- the shared server ---
    public_url: str | None = Field(None, description="The URL people reach this server at (share links use it), e.g. https://patch.lab.example")
    allowed_hosts: list[str] = Field(
        default=["localhost", "127.0.0.1", "::1"],
        description="Host names this server answers to (JSON list; '*' for any). The public URL's host is always allowed.",
    )
    allowed_origins: list[str] = Field(
        default=[], description="Other origins (scheme://host[:port]) whose pages may POST here; the server's own always may."
    )

    @field_validator("models")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PATCHSTUDIO_MODELS must name at least one model")
        return value

    @model_validator(mode="after")
    def _start_models_allowed(self) -> "Settings":
        outside = [m for m in self.models_at_start or [] if m not in self.models]
        if outside:
            raise ValueError(f"PATCHSTUDIO_MODELS_AT_START names models outside PATCHSTUDIO_MODELS: {', '.join(outside)}")
        return self

    def start_models(self) -> list[str]:
        """The allow-listed models that load at start, in the allow-list's order."""
        return list(self.models) if self.models_at_start is None else [m for m in self.models if m in self.models_at_start]

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("PATCHSTUDIO_PUBLIC_URL must be an http(s) URL such as https://patch.lab.example")
        return value.rstrip("/")

    def trusted_hosts(self) -> list[str]:
        hosts = list(self.allowed_hosts)
        if self.public_url:
            hosts.append(urlsplit(self.public_url).hostname or "")
        return [h for h in hosts if h]

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.db_path}"
