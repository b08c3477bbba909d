"""The live estimate in a real browser (live.py, app.js): an edit's exact result, arriving after a newer
edit's estimate replaced its own, is never drawn over it."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from patchstudio.service import ExperimentService  # noqa: E402
from test_explore_browser import ALICE, TOM  # noqa: E402

# Every run the results box shows, in order, as "<run id>:<estimate|exact|>" (a MutationObserver)
RECORD = """() => {
    window.__shown = [];
    const note = () => {
        const r = document.querySelector('#results .result');
        const key = r ? r.dataset.runId + ':' + (r.dataset.live || '') : null;
        if (key && window.__shown[window.__shown.length - 1] !== key) window.__shown.push(key);
    };
    new MutationObserver(note).observe(document.getElementById('results'), {childList: true, subtree: true});
}"""


def test_a_stale_exact_result_never_replaces_a_newer_estimate(browser, browser_model, serve_app, tmp_path, monkeypatch):
    asked, release, finished, exact_ids = threading.Event(), threading.Event(), threading.Event(), {}
    submit = ExperimentService.submit

    def held(self, spec, client):
        """The first edit's exact sweep is held until the second edit's estimate is on screen."""
        if getattr(spec, "method", None) == "activation_patching" and spec.prompts[0].clean == ALICE:
            exact_ids["alice"] = spec.id
            asked.set()
            release.wait(30)
            try:
                return submit(self, spec, client)
            finally:
                finished.set()
        return submit(self, spec, client)

    monkeypatch.setattr(ExperimentService, "submit", held)
    with serve_app(browser_model, tmp_path, live_estimate_gflop=0) as url:
        context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto("/")
        page.evaluate(RECORD)
        page.locator("#clean").fill(ALICE)
        first = page.locator('#results .result[data-live="estimate"]')
        expect(first).to_be_visible()
        alice_estimate = first.get_attribute("data-run-id")
        assert asked.wait(30)  # its follow-up is at the server, held
        page.locator("#clean").fill(TOM)
        expect(page.locator(f'#results .result[data-live="estimate"]:not([data-run-id="{alice_estimate}"])')).to_be_visible()
        release.set()  # the first edit's exact result is answered now, after the newer estimate was drawn
        assert finished.wait(30)
        newer = page.locator('#results .result[data-live="exact"]')
        expect(newer).to_be_visible()
        page.wait_for_timeout(500)  # room for a late swap of the stale answer, had it not been aborted
        shown = page.evaluate("window.__shown")
        alice_exact = exact_ids["alice"]
        assert page.locator("#results .result").get_attribute("data-run-id") != alice_exact
        assert not any(s.startswith(alice_exact) for s in shown), shown
        assert [s.split(":")[1] for s in shown] == ["estimate", "estimate", "exact"], shown
        # the stale follow-up did reach the server and was stored: only the page ignored it
        assert page.evaluate(f"async () => (await fetch('/runs/{alice_exact}.json')).status") == 200
        context.close()
