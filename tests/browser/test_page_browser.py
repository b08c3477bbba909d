"""The explore page as a researcher uses it: views with honest colour bars and hovers, a layout that
holds at 800, 1280 and 1600 px, view state in the URL, code export, and stale results kept."""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from test_explore_browser import ALICE, click_cell, edit_clean, open_explore, wait_for_heatmap_change, wait_for_new_run  # noqa: E402

COLORBAR = ("() => { const gd = document.getElementById('heatmap');"
            " return gd && gd.data ? gd.data[0].colorbar.title.text.replace(/<br>/g, ' ') : ''; }")
HOVER = "([l, h]) => document.getElementById('heatmap').data[0].text[l][h]"


@pytest.mark.parametrize(
    "view, title, hover_first",
    [
        ("share", "share of the clean−corrupted gap restored; 0 = corrupted run, 1 = clean run", "share "),
        ("change", "change in logit diff from the corrupted run; 0 = no effect", "change "),
        ("raw", "logit diff; no effect = ", "raw "),
    ],
)
def test_each_view_names_its_unit_and_baseline(page, view, title, hover_first):
    open_explore(page)
    run_url = "/runs/" + page.locator(".result").get_attribute("data-run-id")
    page.locator("#views a.view", has_text={"share": "share of the gap", "change": "change from no effect",
                                             "raw": "raw metric"}[view]).click()
    page.wait_for_url(lambda url: f"_view={view}" in url)
    expect(page.locator("#views a.view.active")).to_have_count(1)
    page.wait_for_function(f"t => ({COLORBAR})().startsWith(t)", arg=title)
    text = page.evaluate(HOVER, [1, 2])
    assert text.startswith(f"L1 H2: {hover_first}")
    assert all(part in text for part in ("share", "change", "raw"))  # every reading in one hover
    # the view survives a reload and a fresh browser (it is in the link)
    page.reload()
    page.wait_for_function(f"t => ({COLORBAR})().startsWith(t)", arg=title)
    assert run_url.split("?")[0] in page.url


@pytest.mark.parametrize("width", [800, 1280, 1600])
def test_layout_holds_and_the_heatmap_stays_in_view_after_an_edit(browser, base_url, width):
    ctx = browser.new_context(base_url=base_url, viewport={"width": width, "height": 900})
    page = ctx.new_page()
    try:
        before = open_explore(page)
        overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        assert page.evaluate(overflow) <= 0, "the page scrolls sideways"
        # edit a field low in the form, scrolled to it as a user would
        metric = page.locator("[name=metric]")
        metric.scroll_into_view_if_needed()
        metric.select_option("prob")
        wait_for_heatmap_change(page, before)
        box = page.locator("#heatmap").bounding_box()
        viewport = page.viewport_size
        assert box is not None and box["y"] < viewport["height"] and box["y"] + box["height"] > 0, (width, box)
        assert page.evaluate(overflow) <= 0
        # the prompt is a multi-line field: the whole prompt is visible, not cut at the field's edge
        clean = page.locator("#clean")
        assert clean.evaluate("el => el.tagName") == "TEXTAREA"
    finally:
        ctx.close()


def test_selected_cell_is_outlined_and_kept_in_the_link(page):
    z = open_explore(page)
    page.locator("[name=direction]").select_option("noise")  # a fresh run with its own /runs/ URL
    url = wait_for_new_run(page, page.url)
    z = wait_for_heatmap_change(page, z)
    click_cell(page, z, 1, 2)
    page.wait_for_url(lambda u: "_layer=1" in u and "_head=2" in u)
    shapes = "() => (document.getElementById('heatmap').layout.shapes || []).map(s => [s.x0, s.y0])"
    assert page.evaluate(shapes) == [[1.5, 0.5]]
    page.reload()
    expect(page.locator("#figure1")).to_contain_text("L1 H2")  # Figure 1 is for the selected cell
    page.wait_for_function(f"() => JSON.stringify(({shapes})()) === JSON.stringify([[1.5, 0.5]])")
    assert url.split("?")[0] in page.url


def test_code_export_reproduces_the_run(page):
    open_explore(page)
    page.locator("#code-export summary").click()
    code = page.locator("#python-code").inner_text()
    run_id = page.locator(".result").get_attribute("data-run-id")
    assert "import patchstudio" in code and f"assert result.id == '{run_id}'" in code
    namespace: dict = {}
    exec(code.split("model = ")[0], namespace)  # the spec part runs as Python and is the run's spec
    from patchstudio.specs import parse_spec

    assert parse_spec(namespace["spec"]).id == run_id


def test_pausing_mid_word_keeps_the_last_result(page):
    z = open_explore(page)
    edit_clean(page, ALICE)
    z = wait_for_heatmap_change(page, z)
    edit_clean(page, "When Alice and Bob went to the sch, Bob gave a drink to")  # a half-typed word
    expect(page.locator("#err-clean")).to_contain_text("'sch' is not in this model's vocabulary")
    expect(page.locator("#heatmap")).to_have_count(1)
    expect(page.locator(".results-panel .result")).to_have_css("opacity", "0.45")
    expect(page.locator("#error-box")).not_to_contain_text("vocabulary")  # said once, beside the field


def test_attention_patterns_from_a_head_cell(page):
    open_explore(page)
    link = page.locator("#attention-link")
    expect(link).to_be_visible()
    link.click()
    page.locator("#compute-attention button").click()  # computed on request, then stored
    expect(page.locator("#attention-clean .main-svg").first).to_be_visible()
    expect(page.locator("#attention-corrupted .main-svg").first).to_be_visible()
    expect(page.locator("#attention-layer .main-svg").first).to_be_visible()
    end_row = page.evaluate("() => document.getElementById('attention-clean').layout.shapes[0].name")
    assert end_row == "END"
    # a reload shows the stored patterns: no button
    page.reload()
    expect(page.locator("#compute-attention")).to_have_count(0)
    expect(page.locator("#attention-clean .main-svg").first).to_be_visible()


def test_compare_with_another_run(page):
    open_explore(page)
    first = page.locator(".result").get_attribute("data-run-id")
    page.locator("[name=direction]").select_option("noise")
    page.wait_for_function("id => document.querySelector('.result').dataset.runId !== id", arg=first)
    page.locator("#compare-with [name=b]").fill(first)
    page.locator("#compare-with button").click()
    expect(page.locator("#compare-diff .main-svg").first).to_be_visible()
    expect(page.locator("#max-diff")).not_to_have_text("0.0000")
    ranges = page.evaluate("() => ['compare-a', 'compare-b'].map(id => { const t = document.getElementById(id).data[0]; return [t.zmin, t.zmax]; })")
    assert ranges[0] == ranges[1]  # one scale for both runs


def test_ioi_positions_are_named_in_axes_and_hovers(page):
    open_explore(page)
    page.locator("[name=component]").select_option("resid_pre")
    page.locator("[name=positions]").select_option("each")
    # per position, cells are roles (IO, S1, S2, END), named on the axis and in the hover
    page.wait_for_function("() => { const gd = document.getElementById('heatmap'); return gd && gd.data && gd.data[0].x && gd.data[0].x.includes('S2 (John)'); }")
    x = page.evaluate("() => document.getElementById('heatmap').data[0].x")
    assert x.index("IO (Mary)") == 2 and x.index("S1 (John)") == 4 and x[-1] == "END (to)"
    hover = page.evaluate("(i) => document.getElementById('heatmap').data[0].text[0][i]", x.index("IO (Mary)"))
    assert hover.startswith("L0 IO (Mary): ")


def test_cancel_is_final_for_that_submission(browser, browser_model, tmp_path, serve_app):
    """Every run is a background job here. Typing starts one; clicking Cancel blurs the prompt
    field, which must not resubmit the experiment (the job it just cancelled)."""
    with serve_app(browser_model, tmp_path, background_patched_runs=0, local_workers=1) as url:
        ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        page = ctx.new_page()
        try:
            page.goto("/")
            posts: list[str] = []
            page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/explore") else None)
            clean = page.locator("#clean")
            clean.click()
            clean.press("End")
            clean.type(" ")  # an edit, cursor still in the field: a job starts after the debounce
            cancel = page.locator("#job button", has_text="Cancel")
            page.wait_for_function("() => document.querySelector('#job, .result') !== null", timeout=60_000)
            submitted = len(posts)
            assert submitted >= 1
            if cancel.count():  # the tiny sweep may already be done; what matters is no resubmission
                cancel.click()
            else:
                page.locator(".tagline").click()  # the same blur of the edited field (not a link)
            page.wait_for_timeout(1500)
            assert len(posts) == submitted, "clicking Cancel (a blur) resubmitted the experiment"
        finally:
            ctx.close()
