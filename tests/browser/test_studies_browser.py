"""A study as a researcher builds and shares one: three runs added and reordered in the editor, notes
in Markdown, the link opened in a fresh browser (title, notes, three heatmaps drawn), and the
downloaded notebook run headless to the same run ids. On the shipped default model, the one the
notebook's kernel loads by name."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

IOI = {"clean": "When Mary and John went to the store , John gave a drink to",
       "corrupted": "When Mary and John went to the store , Mary gave a drink to", "answer": "Mary", "wrong": "John"}
SPECS = [{"prompts": [IOI], "component": "head"},
         {"prompts": [IOI], "component": "resid_pre", "positions": "each"},
         {"method": "ablation", "prompts": [IOI], "component": "head"}]


@pytest.fixture
def study_url(default_model_or_none, serve_app, tmp_path):
    if default_model_or_none is None:
        pytest.skip("the notebook loads the shipped default model by name; its weights are not here")
    with serve_app(default_model_or_none, tmp_path) as url:
        yield url


def test_build_a_study_share_it_and_rerun_its_notebook(browser, study_url, tmp_path):
    author = browser.new_context(base_url=study_url, viewport={"width": 1280, "height": 900})
    author.set_default_timeout(15_000)
    try:
        ids = []
        for spec in SPECS:
            response = author.request.post("/api/runs", data=spec)
            assert response.ok, response.text()
            ids.append(response.json()["id"])
        page = author.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # from the first run's page, as a user would: Add to study, then the other two from Recent runs
        page.goto(f"/runs/{ids[0]}")
        page.locator("a.add-to-study").click()
        page.wait_for_url(re.compile(r"/studies/new\?runs=" + ids[0]))
        for run_id in (ids[2], ids[1]):
            page.locator(f'button.add-run[data-run-id="{run_id}"]').click()
        rows = page.locator("#study-rows .study-row")
        expect(rows).to_have_count(3)
        rows.nth(2).locator("button.move-up").click()  # [0, 2, 1] -> [0, 1, 2]
        assert [rows.nth(i).get_attribute("data-run-id") for i in range(3)] == ids
        expect(page.locator(f'button.add-run[data-run-id="{ids[1]}"]')).to_be_disabled()
        page.fill("#title", "IOI: three views")
        page.fill("#notes", "Heads, then the *residual stream*, then **ablation**.\n\n<script>alert(1)</script>")
        page.locator("#save-study").click()
        page.wait_for_url(re.compile(r"/studies/[0-9a-f]{16}$"))
        link = page.locator("#share-link").input_value()
        assert link == page.url
        assert not errors, errors
    finally:
        author.close()

    reader = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)  # a colleague
    reader.set_default_timeout(15_000)
    try:
        page = reader.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("dialog", lambda dialog: errors.append(f"a dialog opened: {dialog.message}"))
        page.goto(link)
        expect(page.locator("#study-title")).to_have_text("IOI: three views")
        expect(page.locator("#study-notes em")).to_have_text("residual stream")
        expect(page.locator("#study-notes")).to_contain_text("<script>alert(1)</script>")  # shown as text
        assert page.locator(".study-run").evaluate_all("els => els.map(e => e.dataset.runId)") == ids
        for number in (1, 2, 3):
            expect(page.locator(f"#study-plot-{number} .main-svg").first).to_be_visible()
        with page.expect_download() as caught:
            page.locator("#notebook-link").click()
        download = caught.value
        assert re.fullmatch(r"patchstudio-study-[0-9a-f]{16}\.ipynb", download.suggested_filename)
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        assert not errors, errors
    finally:
        reader.close()

    nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]' (nbformat, nbclient, ipykernel)")
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()  # a failed assert raises here
    printed = ["".join(o["text"] for o in cell.outputs if o.get("name") == "stdout")
               for cell in nb.cells if cell.cell_type == "code" and "patchstudio.run(" in cell.source]
    assert [p.split(":", 1)[0].strip() for p in printed] == ids
