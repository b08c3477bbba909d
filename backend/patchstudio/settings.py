"""Settings from the environment (prefix PATCHSTUDIO_; DATABASE_URL also read bare) or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PATCHSTUDIO_", env_file=".env", extra="ignore")

    models: list[str] = Field(
        default=["default"],
        description="Allow-list of model names a server offers (JSON list in the environment). "
        "Requests can only pick these: nothing else is ever loaded from a request.",
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
        2_000, ge=0, description="Experiments needing more patched runs than this run as background jobs in the page."
    )
    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "PATCHSTUDIO_DATABASE_URL"),
        description="Any SQLAlchemy URL (e.g. postgresql+psycopg://...); default: a SQLite file at db_path.",
    )
    db_path: Path = Field(Path("data/patchstudio.sqlite3"), description="SQLite file used when no DATABASE_URL is set.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    @field_validator("models")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PATCHSTUDIO_MODELS must name at least one model")
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        from patchstudio.store import sqlite_url

        return sqlite_url(self.db_path)
