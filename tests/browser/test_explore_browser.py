"""The explore page in a real browser: what a user types, clicks and sees.

Each test drives Chromium against a live server and waits with Playwright's auto-waiting
assertions (no fixed sleeps).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RUN_URL = re.compile(r"/runs/[0-9a-f]{16}$")
ALICE = "When Alice and Bob went to the store, Bob gave a drink to"
ALICE_SWAPPED = "When Alice and Bob went to the store, Alice gave a drink to"
TOM = "When Tom and Anna went to the garden, Anna gave a book to"
EVIL = "<script>alert(1)</script> When Mary and John went to the store, John gave a drink to"

HEATMAP_Z = "() => { const gd = document.getElementById('heatmap'); return gd && gd.data ? gd.data[0].z : null; }"


def open_explore(page, path: str = "/") -> list[list[float]]:
    """Open a page with a result and wait until plotly has drawn the heatmap; its z values. The home
    page shows a result only once it is stored (a GET never computes): press Run there when it is not."""
    page.goto(path)
    if path == "/":
        expect(page.locator("#results")).to_contain_text(re.compile(r"results appear here|clean"))
        if page.locator("#heatmap").count() == 0:
            page.locator("#spec-form button[type=submit]").click()
    expect(page.locator("#heatmap .main-svg").first).to_be_visible()
    page.wait_for_function(f"({HEATMAP_Z})() !== null")
    return heatmap_z(page)


def heatmap_z(page) -> list[list[float]]:
    return page.evaluate(HEATMAP_Z)


def raw_values(page) -> list[list[float]]:
    """The shown run's raw metric values, from its .json twin (the heatmap draws a view of them)."""
    return page.evaluate(
        "async () => (await (await fetch('/runs/' + document.querySelector('.result').dataset.runId + '.json')).json()).values"
    )


def wait_for_new_run(page, previous: str) -> str:
    """Wait until the address bar shows a run page other than ``previous``; the new URL."""
    page.wait_for_url(lambda url: bool(RUN_URL.search(url)) and url != previous)
    return page.url


def wait_for_heatmap_change(page, old: list[list[float]]) -> list[list[float]]:
    page.wait_for_function(
        f"old => {{ const z = ({HEATMAP_Z})(); return z !== null && JSON.stringify(z) !== JSON.stringify(old); }}",
        arg=old,
    )
    return heatmap_z(page)


def click_cell(page, z: list[list[float]], layer: int, head: int) -> None:
    """A real mouse click on the heatmap cell (layer, head): hover until plotly labels it, then click."""
    page.locator("#heatmap").scroll_into_view_if_needed()  # a button pressed further down may have scrolled it away
    box = page.locator("#heatmap .nsewdrag").first.bounding_box()
    assert box is not None
    x = box["x"] + (head + 0.5) / len(z[0]) * box["width"]
    y = box["y"] + (layer + 0.5) / len(z) * box["height"]  # layer 0 is the top row
    page.mouse.move(x, y)
    expect(page.locator("#heatmap .hoverlayer .hovertext")).to_contain_text(f"L{layer} H{head}")
    page.mouse.click(x, y)


def compute_figure1(page) -> None:
    """Press Figure 1's button: it computes the companion runs (a POST); the caption then shows."""
    button = page.locator("#figure1 .compute-companions")
    expect(button.or_(page.locator("#figure1-caption")).first).to_be_visible()
    if button.count():
        button.click()
    expect(page.locator("#figure1 .compute-companions")).to_have_count(0)
    expect(page.locator("#figure1-caption")).to_be_visible()


def edit_clean(page, text: str) -> None:
    """Type a new clean prompt the way a user does: replace the text; the form posts as they type."""
    box = page.locator("#clean")
    box.fill(text)
    box.press("End")


def test_typing_a_prompt_redraws_the_heatmap_and_pushes_a_run_url(page):
    before = open_explore(page)
    assert len(before) == 2 and len(before[0]) == 4  # the tiny model: 2 layers x 4 heads
    start = page.url

    edit_clean(page, ALICE)

    url = wait_for_new_run(page, start)
    after = wait_for_heatmap_change(page, before)
    assert RUN_URL.search(url)
    assert len(after) == 2 and len(after[0]) == 4
    expect(page.locator("#answer")).to_have_value("Alice")  # guessed: the name said once
    expect(page.locator("#wrong")).to_have_value("Bob")
    expect(page.locator("#corrupted")).to_have_value(ALICE_SWAPPED)
    expect(page.locator("#results table.tokens").first).to_contain_text("Alice")


def test_clicking_a_heatmap_cell_loads_figure1_for_that_cell(page):
    z = open_explore(page)
    compute_figure1(page)  # the companion runs, computed on request
    caption = page.locator("#figure1-caption")
    expect(caption).to_contain_text("Selected L")  # the initial selection (strongest cell) has loaded
    layer, head = (1, 2) if "L1 H2" not in caption.inner_text() else (0, 1)

    click_cell(page, z, layer, head)

    expect(caption).to_contain_text(f"L{layer} H{head}")
    compute_figure1(page)  # this head's self-repair row is its own run
    expect(caption).to_contain_text(f"L{layer} H{head}")
    raw = raw_values(page)
    expect(page.locator("#patched-value")).to_have_text(f"{raw[layer][head]:.4f}")
    expect(page.locator("#figure1-plot .main-svg").first).to_be_visible()
    # the triangulation table for the same head: every method, the patching row equal to the cell
    table = page.locator("#triangulation")
    expect(table).to_contain_text(f"Triangulation for L{layer} H{head}")
    for method in ("activation patching (restoration, sufficiency-style)", "mean ablation (necessity-style)",
                   "attribution estimate (linear)", "path patching to the logits, MLPs recomputed",
                   "mean ablation: total effect (TE, change)", "mean ablation: direct effect (DE, change)"):
        expect(table).to_contain_text(method)
    row = table.locator("tr", has_text="activation patching (restoration")
    expect(row.locator("td.num").nth(0)).to_have_text(f"{round(100 * z[layer][head]) + 0:d}%")  # the heatmap's share
    expect(row.locator("td.num").nth(1)).to_have_text(f"{raw[layer][head]:.4f}")


def test_share_link_opens_the_same_result_in_a_fresh_browser(page, context, browser, base_url):
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    z = open_explore(page)
    clean = page.locator("#clean-value").inner_text()
    corrupted = page.locator("#corrupted-value").inner_text()
    shown = page.locator("input#share-link").input_value()
    # the link carries the view it shows (issue 20): the view, the scale, the selected cell
    assert re.search(r"/runs/[0-9a-f]{16}\?_view=share&_scale=gap&_layer=\d+&_head=\d+$", shown) and shown.startswith(base_url)

    button = page.locator(".copy-link")
    button.click()
    expect(button).to_have_text("Copied!")
    try:
        link = page.evaluate("navigator.clipboard.readText()")
    except Exception:  # clipboard reads can be unavailable headless: use what the user sees
        link = shown
    assert link == shown

    fresh = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        other = fresh.new_page()
        assert open_explore(other, link) == z
        expect(other.locator("#clean-value")).to_have_text(clean)
        expect(other.locator("#corrupted-value")).to_have_text(corrupted)
        assert other.url == link
    finally:
        fresh.close()


def test_script_in_a_prompt_is_shown_as_text_never_run(page):
    dialogs: list[str] = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    before = open_explore(page)
    start = page.url

    edit_clean(page, EVIL)

    wait_for_new_run(page, start)
    wait_for_heatmap_change(page, before)
    clean_row = page.locator("#results table.tokens").first.locator("tr").first
    for piece in ("<", "script", ">", "alert", "(", "1", ")</"):
        expect(clean_row.locator("td", has_text=piece).first).to_be_visible()
    cells = clean_row.locator("td").all_inner_texts()  # after <bos>
    assert cells[1:10] == ["<", "script", ">", "alert", "(", "1", ")</", "script", ">"]
    expect(page.locator("#clean")).to_have_value(EVIL)
    # no script the browser would run holds it; data blocks (application/json, never run) may quote
    # the prompt (the per-prompt hover does), but never with a raw "<" that could close their element
    assert page.evaluate(
        "[...document.querySelectorAll('script')].filter(s => s.type !== 'application/json' && s.textContent.includes('alert(1)')).length"
    ) == 0
    assert page.evaluate(
        "[...document.querySelectorAll('script[type=\"application/json\"]')].filter(s => s.textContent.includes('<')).length"
    ) == 0
    assert dialogs == []


def test_mismatched_token_counts_show_an_inline_error_with_both_tokenizations(page):
    open_explore(page)
    page.locator("[name=corruption]").select_option("custom")
    run_url = wait_for_new_run(page, page.url)  # the same experiment, now with a custom corruption
    corrupted = page.locator("#corrupted")
    expect(corrupted).to_be_editable()

    corrupted.fill("When Mary and John went to the store gave a drink to")

    expect(page.locator("#err-corrupted")).to_contain_text("same number of tokens")
    box = page.locator("#error-box")
    expect(box).to_be_visible()
    expect(box.locator("tr").nth(0)).to_contain_text("clean (15)")
    expect(box.locator("tr").nth(1)).to_contain_text("corrupted (13)")
    expect(box.locator("td.diff")).to_have_text([",", "gave"])
    assert page.url == run_url
    # the last good result stays, dimmed as stale; the message is beside the field, not repeated
    expect(page.locator("#heatmap")).to_have_count(1)
    expect(page.locator(".results-panel .result")).to_have_css("opacity", "0.45")
    expect(box).not_to_contain_text("same number of tokens")
    expect(box).to_contain_text("see the message beside the marked field")


def test_back_and_forward_restore_each_run(page):
    z0 = open_explore(page)

    edit_clean(page, ALICE)
    first = wait_for_new_run(page, page.url)
    z1 = wait_for_heatmap_change(page, z0)
    first_clean = page.locator("#clean-value").inner_text()

    edit_clean(page, TOM)
    second = wait_for_new_run(page, first)
    z2 = wait_for_heatmap_change(page, z1)
    second_clean = page.locator("#clean-value").inner_text()
    assert first_clean != second_clean

    page.go_back()
    page.wait_for_url(first)
    expect(page.locator("#clean-value")).to_have_text(first_clean)
    page.wait_for_function(f"z => JSON.stringify(({HEATMAP_Z})()) === JSON.stringify(z)", arg=z1)
    # the form shows the first run's experiment, not the text typed after it, and still works
    expect(page.locator("#clean")).to_have_value(ALICE)
    expect(page.locator("#corrupted")).to_have_value(ALICE_SWAPPED)
    expect(page.locator("#answer")).to_have_value("Alice")
    compute_figure1(page)
    caption = page.locator("#figure1-caption")
    expect(caption).to_contain_text("Selected L")
    layer, head = (0, 3) if "L0 H3" not in caption.inner_text() else (1, 1)
    click_cell(page, z1, layer, head)
    expect(caption).to_contain_text(f"L{layer} H{head}")
    expect(page.locator("#patched-value")).to_have_text(f"{raw_values(page)[layer][head]:.4f}")

    page.go_forward()
    page.wait_for_url(second)
    expect(page.locator("#clean-value")).to_have_text(second_clean)
    page.wait_for_function(f"z => JSON.stringify(({HEATMAP_Z})()) === JSON.stringify(z)", arg=z2)


def test_screenshot_for_the_readme(browser, showcase, tmp_path):
    """The README's picture: written to docs/ only when PATCHSTUDIO_UPDATE_SCREENSHOT=1, so that a test
    run never rewrites a tracked file."""
    url, model = showcase
    ctx = browser.new_context(base_url=url, viewport={"width": 1360, "height": 900})
    try:
        page = ctx.new_page()
        z = open_explore(page)
        assert len(z) == model.cfg.n_layers and all(len(row) == model.cfg.n_heads for row in z)
        compute_figure1(page)
        expect(page.locator("#figure1-plot .main-svg").first).to_be_visible()
        expect(page.locator("#figure1-caption")).to_contain_text("Selected L")
        page.mouse.move(0, 0)  # no hover label in the picture
        docs = REPO / "docs" if os.environ.get("PATCHSTUDIO_UPDATE_SCREENSHOT") == "1" else tmp_path
        docs.mkdir(exist_ok=True)
        page.screenshot(path=str(docs / "screenshot.png"), full_page=True)
        assert (docs / "screenshot.png").stat().st_size > 10_000
        # the attention patterns of the selected head, and the run compared with its noising twin
        first = page.locator(".result").get_attribute("data-run-id")
        page.locator("#attention-link").click()
        page.locator("#compute-attention button").click()
        expect(page.locator("#attention-layer .main-svg").first).to_be_visible()
        page.mouse.move(0, 0)
        page.screenshot(path=str(docs / "attention.png"), full_page=True)
        page.goto("/")
        page.locator("[name=direction]").select_option("noise")
        page.wait_for_function("id => document.querySelector('.result').dataset.runId !== id", arg=first)
        second = page.locator(".result").get_attribute("data-run-id")
        page.goto(f"/compare?a={first}&b={second}")
        expect(page.locator("#compare-diff .main-svg").first).to_be_visible()
        page.screenshot(path=str(docs / "compare.png"), full_page=True)
        assert (docs / "attention.png").stat().st_size > 10_000 and (docs / "compare.png").stat().st_size > 10_000
    finally:
        ctx.close()


def test_api_docs_render_offline_with_no_request_leaving_the_server(page, base_url):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto("/docs")
    expect(page.locator("#swagger-ui .info .title")).to_contain_text("Patch Studio")
    expect(page.locator("#swagger-ui")).to_contain_text("/api/runs")
    assert requests and all(url.startswith(base_url) for url in requests), [u for u in requests if not u.startswith(base_url)]


THREE_PAIRS = [
    {"clean": "When Mary and John went to the store , John gave a drink to",
     "corrupted": "When Mary and John went to the store , Mary gave a drink to", "answer": "Mary", "wrong": "John"},
    {"clean": "When Alice and Bob went to the garden , Bob gave a book to",
     "corrupted": "When Alice and Bob went to the garden , Alice gave a book to", "answer": "Alice", "wrong": "Bob"},
    {"clean": "When Tom and Anna went to the school , Anna gave a ring to",
     "corrupted": "When Tom and Anna went to the school , Tom gave a ring to", "answer": "Tom", "wrong": "Anna"},
]
STRIP = "() => { const gd = document.getElementById('prompt-strip'); return gd && gd.data ? " \
        "{n: gd.data[0].x.length, x: gd.data[0].x, mean: gd.data[1].x[0], title: gd.layout.xaxis.title.text} : null; }"


@pytest.mark.parametrize("view", ["share", "raw"])
def test_clicking_a_cell_shows_its_value_on_each_prompt(page, view):
    run_id = page.request.post("/api/runs", data={"prompts": THREE_PAIRS}).json()["id"]
    z = open_explore(page, f"/runs/{run_id}?_view={view}")
    twin = page.request.get(f"/runs/{run_id}.json").json()
    expect(page.locator("#prompt-strip .main-svg").first).to_be_visible()
    caption = page.locator("#prompt-strip-caption")
    layer, head = (1, 2) if "L1 H2" not in caption.inner_text() else (0, 1)

    click_cell(page, z, layer, head)

    expect(caption).to_contain_text(f"Selected L{layer} H{head} on each of 3 prompt pairs")
    # the caption arrives with the fragment; plotly draws the strip just after (polled from here:
    # wait_for_function evaluates its predicate with eval, which the page's CSP forbids)
    strip = None
    for _ in range(100):
        strip = page.evaluate(STRIP)
        if strip is not None:
            break
        page.wait_for_timeout(100)
    assert strip["n"] == 3  # one point per prompt pair
    assert strip["title"].replace("<br>", " ") == twin["views"][view]["title"]  # the unit and the baseline
    assert strip["mean"] == pytest.approx(twin["views"][view]["values"][layer][head], abs=1e-9)
    raw = [one[layer][head] for one in twin["per_prompt"]]
    if view == "raw":
        assert strip["x"] == pytest.approx(raw, abs=1e-9)
    expect(page.locator("#cell-mean")).to_have_text(f"{twin['views'][view]['values'][layer][head]:+.4f}")
    expect(page.locator("#cell-ci")).to_be_visible()  # the 95% interval, in numbers beside the plot
    # the axis title as drawn (plotly's SVG text), not only the figure data
    expect(page.locator("#prompt-strip .g-xtitle")).to_contain_text(twin["views"][view]["title"].split(";")[0][:20])
