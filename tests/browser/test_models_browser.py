"""Models loaded while the server runs, in a real browser: a second model is loaded from the page's
model picker while a background job runs on the first, then an experiment runs on it, and the job
on the first model finishes."""

from __future__ import annotations

import re
import time

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from helpers import TINY_PAIRS, WORDS, build_tiny_model, build_word_tokenizer  # noqa: E402
from test_jobs_browser import open_page  # noqa: E402


class SlowToLoad(dict):
    """The models by name; "other" takes 2 s to load, so the page can show it loading."""

    def __getitem__(self, name):
        if name == "other":
            time.sleep(2.0)
        return super().__getitem__(name)


def status(page, job_id: str) -> str:
    return page.request.get(f"/jobs/{job_id}.json").json()["status"]


def until(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_load_a_second_model_from_the_page_while_a_job_runs_on_the_first(browser, tmp_path, serve_app):
    tokenizer = build_word_tokenizer(tmp_path / "tok", words=WORDS)
    first = build_tiny_model(tokenizer)
    first.blocks[0].register_forward_pre_hook(lambda module, args: time.sleep(2.0))  # its job runs for about 12 s
    second = build_tiny_model(tokenizer, seed=1)
    models = SlowToLoad(default=first, other=second)
    with serve_app(models, tmp_path, models_at_start=["default"], chunk_rows=2, local_workers=1) as url:
        ctx, page, errors = open_page(browser, url)
        try:
            page.goto("/")
            panel = page.locator("#model-states")
            expect(panel.locator("li[data-model=default]")).to_have_attribute("data-state", "loaded")
            expect(panel.locator("li[data-model=other]")).to_contain_text("other: not loaded")
            # a background job on the first model, from this browser (its cookie)
            job = page.request.post("/api/jobs", data={"prompts": TINY_PAIRS[:1], "component": "head", "model": "default"})
            assert job.status == 202, job.text()
            job_id = job.json()["id"]
            assert until(lambda: status(page, job_id) == "running")
            # load the second from the picker: it shows its progress, then that it is loaded
            panel.locator("li[data-model=other] button", has_text="Load").click()
            expect(panel.locator("li[data-model=other]")).to_have_attribute("data-state", "loading")
            expect(panel.locator("li[data-model=other] .phase")).to_have_text(re.compile("reading weights|fingerprinting"))
            expect(panel.locator("li[data-model=other]")).to_have_attribute("data-state", "loaded")
            assert status(page, job_id) == "running"  # the job on the first model still runs
            # an experiment on the second model, computed while the first one's job goes on
            page.locator("select[name=model]").select_option("other")
            expect(page.locator("#heatmap .main-svg").first).to_be_visible()
            assert page.locator("#results").inner_text().count("other") >= 1
            assert until(lambda: status(page, job_id) in ("done", "error", "cancelled"), 60)
            assert status(page, job_id) == "done"
            assert not errors, errors
        finally:
            ctx.close()
