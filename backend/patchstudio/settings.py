"""Settings from the environment (prefix PATCHSTUDIO_) or a .env file."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PATCHSTUDIO_", env_file=".env", extra="ignore")

    models: list[str] = Field(
        default=["default"],
        description="Allow-list of model names a server offers (JSON list in the environment). "
        "Requests can only pick these: nothing else is ever loaded from a request.",
    )
    device: str = Field("cpu", description="torch device for the models.")
    chunk_rows: int = Field(256, ge=1, description="Most patched rows per forward pass (bounds memory).")
    max_patched_runs: int = Field(
        50_000, ge=1, description="Budget: most patched runs (prompts x patches) one experiment may ask for."
    )

    @field_validator("models")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PATCHSTUDIO_MODELS must name at least one model")
        return value
