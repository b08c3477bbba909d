"""Helpers for the web tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

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


@contextlib.contextmanager
def live_server(tmp_path, model, **settings):
    """The app in a real uvicorn server on a loopback port (a thread of this process); yields its URL."""
    import uvicorn

    options = {"models": ["default"], "database_url": f"sqlite:///{tmp_path}/live.sqlite3", **settings}
    app = create_app(Settings(**options), model_loader=lambda name: model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
