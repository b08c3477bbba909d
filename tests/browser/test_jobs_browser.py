"""Jobs in a real browser: the jobs list with progress, time left and a link to the result; an edit
that cancels the job it replaces unless someone else is watching it; recent runs that say what was
asked, with companion runs folded under their parent.

Set PATCHSTUDIO_SCREENSHOTS to a folder to keep screenshots of the pages at 800, 1280 and 1600 px.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from helpers import WORDS, build_tiny_model, build_word_tokenizer  # noqa: E402
from test_explore_browser import compute_figure1, open_explore  # noqa: E402

RUN_URL = re.compile(r"/runs/[0-9a-f]{16}$")
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
WIDTHS = (800, 1280, 1600)


def open_page(browser, url: str, width: int = 1280):
    ctx = browser.new_context(base_url=url, viewport={"width": width, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    return ctx, page, errors


def shoot(page, name: str) -> None:
    folder = os.environ.get("PATCHSTUDIO_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def check_layout(browser, url: str, path: str, name: str) -> None:
    """No sideways scroll at any width (and a screenshot of each when asked for)."""
    for width in WIDTHS:
        ctx, page, errors = open_page(browser, url, width)
        try:
            page.goto(path)
            assert page.evaluate(OVERFLOW) <= 0, f"{path} scrolls sideways at {width} px"
            shoot(page, f"{name}-{width}")
            assert not errors, errors
        finally:
            ctx.close()


@pytest.fixture
def slow_model(tmp_path):
    """A tiny model whose every forward pass takes 1.2 s: a sweep runs long enough to watch."""
    model = build_tiny_model(build_word_tokenizer(tmp_path / "tok", words=WORDS))
    model.blocks[0].register_forward_pre_hook(lambda module, args: time.sleep(1.2))
    return model


def test_jobs_page_shows_progress_and_time_left_then_links_to_the_result(browser, slow_model, tmp_path, serve_app):
    # every run a job, two patched runs per forward pass: progress arrives in steps
    with serve_app(slow_model, tmp_path, background_patched_runs=0, local_workers=1, chunk_rows=2) as url:
        ctx, page, errors = open_page(browser, url)
        try:
            page.goto("/")
            page.locator("#spec-form button[type=submit]").click()
            expect(page.locator("#job")).to_contain_text("Long sweep")
            job_id = page.locator("#job").get_attribute("data-job-id")
            page.locator("header nav a", has_text="Jobs").click()  # found from the nav
            page.wait_for_url("**/jobs")
            row = page.locator(f"tr.job-row[data-job-id='{job_id}']")
            expect(row).to_contain_text("activation patching · head · denoise · logit_diff")
            # while it runs: its own measured rate and the time left
            running = page.locator(f"#jobs-running tr[data-job-id='{job_id}']")
            expect(running.locator(".eta")).to_contain_text(re.compile(r"about \d+ s"), timeout=30_000)
            expect(running.locator(".eta")).to_contain_text("patched runs/s (this job so far)")
            expect(running.locator("progress")).to_have_attribute("max", "8")
            check_layout(browser, url, "/jobs", "jobs-running")
            # done: the list links to the result, which opens as a run page
            link = page.locator(f"#jobs-recent tr[data-job-id='{job_id}'] a.result-link")
            expect(link).to_have_text("done: see the result", timeout=60_000)
            link.click()
            page.wait_for_url(RUN_URL)
            assert page.url.endswith(f"/runs/{job_id}")
            expect(page.locator("#heatmap .main-svg").first).to_be_visible()
            assert not errors, errors
        finally:
            ctx.close()


def test_an_edit_cancels_the_job_it_replaces_unless_someone_else_watches_it(browser, browser_model, tmp_path, serve_app):
    # no worker: jobs wait in the queue until they are cancelled
    with serve_app(browser_model, tmp_path, background_patched_runs=0, local_workers=0) as url:
        ctx, page, errors = open_page(browser, url)
        colleague, their_page, their_errors = open_page(browser, url)
        try:
            page.goto("/")
            page.locator("#spec-form button[type=submit]").click()
            expect(page.locator("#job")).to_contain_text("waiting for a worker")
            first = page.locator("#job").get_attribute("data-job-id")
            # nobody else has it open: changing the metric replaces it, and it is cancelled
            page.locator("[name=metric]").select_option("prob")
            expect(page.locator("#replaced-note")).to_contain_text(f"The job this edit replaced ({first}) was cancelled: nobody else was watching it", timeout=30_000)
            second = page.locator("#job").get_attribute("data-job-id")
            assert second != first
            expect(page.locator("#job")).to_contain_text("waiting for a worker")
            # a colleague opens the new job's link and watches it: the next edit leaves it running
            their_page.goto(f"/jobs/{second}")
            expect(their_page.locator("#job")).to_contain_text("waiting for a worker")
            their_page.wait_for_timeout(1200)  # it polls at least once more
            page.locator("[name=metric]").select_option("loss")
            expect(page.locator("#replaced-note")).to_contain_text(f"The job this edit replaced ({second}) goes on: another page is watching it", timeout=30_000)
            shoot(page, "replaced-note")
            their_page.wait_for_timeout(1200)
            expect(their_page.locator("#job")).to_contain_text("waiting for a worker")
            expect(their_page.locator("#job")).not_to_contain_text("Cancelled")
            # the jobs list agrees: the first cancelled, the watched one and the newest still queued
            page.goto("/jobs")
            expect(page.locator(f"#jobs-recent tr[data-job-id='{first}']")).to_contain_text("cancelled")
            expect(page.locator(f"#jobs-queued tr[data-job-id='{second}']")).to_contain_text("waiting for a worker")
            expect(page.locator("#jobs-queued tr.job-row")).to_have_count(2)
            check_layout(browser, url, "/jobs", "jobs-queued")
            assert not errors and not their_errors, (errors, their_errors)
        finally:
            ctx.close()
            colleague.close()


def test_recent_runs_show_what_was_asked_with_companions_under_their_parent(browser, base_url):
    ctx, page, errors = open_page(browser, base_url)
    try:
        open_explore(page)
        parent = page.locator(".result").get_attribute("data-run-id")
        compute_figure1(page)  # Figure 1's companion runs, stored under their own ids
        page.goto("/")
        runs = page.locator("#recent-runs > li.recent-run")
        expect(runs).to_have_count(1)  # the companions do not fill the list
        item = runs.first
        assert item.get_attribute("data-run-id") == parent
        expect(item.locator(".asked").first).to_have_text("activation patching · head · denoise · logit_diff")
        folded = item.locator("details.companion-runs")
        expect(folded.locator("summary")).to_contain_text(re.compile(r"\d+ companion runs \(Figure 1, triangulation\)"))
        ablation = folded.locator("li.companion-run", has_text="mean ablation:")
        expect(ablation).to_be_hidden()  # folded until opened
        folded.locator("summary").click()
        expect(ablation).to_be_visible()
        expect(ablation.locator(".asked")).to_have_text("ablation · head · mean ablation · logit_diff")
        shoot(page, "recent-runs-open")
        check_layout(browser, base_url, "/", "recent-runs")
        companion = ablation.get_attribute("data-run-id")
        ablation.locator("a").click()
        page.wait_for_url(f"**/runs/{companion}")
        expect(page.locator("#heatmap .main-svg").first).to_be_visible()
        assert not errors, errors
    finally:
        ctx.close()
