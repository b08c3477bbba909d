"""Helpers for the web tests."""

from __future__ import annotations

from fastapi.testclient import TestClient

from patchstudio.settings import Settings
from patchstudio.web.app import create_app


def make_client(tmp_path, model, *, raise_server_exceptions: bool = True, **settings) -> TestClient:
    """The app on ``model`` (TestClient's host, testserver, is allowed), with a fresh SQLite file."""
    options = {"models": ["default"], "database_url": f"sqlite:///{tmp_path}/runs.sqlite3", "allowed_hosts": ["testserver"], **settings}
    return TestClient(create_app(Settings(**options), model_loader=lambda name: model), raise_server_exceptions=raise_server_exceptions)


IOI = "When Mary and John went to the store , John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store , Mary gave a drink to"


def form(**overrides) -> dict[str, str]:
    data = {
        "model": "default", "source": "pair", "clean": IOI, "corruption": "swap", "auto_answers": "on",
        "method": "activation_patching", "component": "head", "positions": "all", "direction": "denoise",
        "ablation": "mean", "seed": "0", "metric": "logit_diff", "family": "ioi_swap", "n_pairs": "2",
        "family_seed": "0", "template": "0",
    }
    data.update(overrides)
    return data


HTMX = {"HX-Request": "true"}
