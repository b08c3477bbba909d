"""Real-browser fixtures: the app served by uvicorn on a loopback port, driven by Chromium through
Playwright. One server and one browser per module; each test gets a fresh browser context.

Chromium comes from the system (Debian's ``chromium`` package, which CI installs); Playwright's own
browser download is never used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from helpers import WORDS, build_tiny_model, build_word_tokenizer  # tests/helpers.py (tests/ is on sys.path)

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# The pieces Whitespace pre-tokenization cuts "<script>alert(1)</script>" into, so the escaping test
# sees the prompt reach the token table instead of stopping at the unknown-word check.
SCRIPT_PIECES = ["<", "script", ">", "alert", "(", "1", ")</"]


def _chromium() -> str | None:
    for candidate in (os.environ.get("PATCHSTUDIO_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model, directory: Path, **overrides):
    """The app on ``model`` (offered as "default"; or a dict of models by name) in a real uvicorn
    server (background thread); yields its base URL."""
    import uvicorn

    from patchstudio.settings import Settings
    from patchstudio.web.app import create_app

    models = model if isinstance(model, dict) else {"default": model}
    settings = Settings(models=list(models), database_url=f"sqlite:///{directory}/runs.sqlite3", **overrides)
    app = create_app(settings, model_loader=models.__getitem__)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects: the marker must be there when it looks
def pytest_collection_modifyitems(config, items):
    """Every test under tests/browser is marked ``browser``, so ``pytest -m "not browser"`` skips
    the real-browser suite (the slow part of the fast loop)."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture
def serve_app():
    """``serve`` itself, for a test that needs a server with its own settings (a test module cannot
    import it from here: another directory's conftest shares the module name)."""
    return serve


@pytest.fixture(scope="module")
def browser_model(tmp_path_factory):
    """The tiny random model, with a vocabulary that also covers the escaping test's markup."""
    tokenizer = build_word_tokenizer(tmp_path_factory.mktemp("browser-tok"), words=[*WORDS, *SCRIPT_PIECES])
    return build_tiny_model(tokenizer)


@pytest.fixture(scope="module")
def base_url(browser_model, tmp_path_factory):
    with serve(browser_model, tmp_path_factory.mktemp("browser-db")) as url:
        yield url


@pytest.fixture(scope="module")
def default_model_or_none():
    """The shipped default model when its weights are present, else None."""
    from patchstudio.models.default_model import DEFAULT_DIR, WEIGHTS_FILE

    if not (DEFAULT_DIR / WEIGHTS_FILE).exists():
        return None
    from patchstudio.models.registry import load_model

    return load_model("default")


@pytest.fixture(scope="module")
def showcase(default_model_or_none, browser_model, tmp_path_factory):
    """(base URL, model) for the screenshot: the default model if shipped, else the tiny one."""
    model = default_model_or_none if default_model_or_none is not None else browser_model
    with serve(model, tmp_path_factory.mktemp("showcase-db")) as url:
        yield url, model


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    if executable is None:
        pytest.skip("browser tests need Chromium at /usr/bin/chromium (apt-get install chromium); "
                    "Playwright's own browser download is not used")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser, base_url):
    ctx = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # the server's Content-Security-Policy must not block anything the pages do (no inline script, no eval)
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield page
    assert not errors, f"JavaScript errors (or CSP violations) on the page: {errors}"
