"""Issue 20's page in a real browser: noise drawn as noise (the receivers example under the floor,
on the −1..1 scale), the data range as a choice with its zoom stated, marked cells that still take
a click, a share link and a PNG that carry the view and the whole claim, bars with error bars and
no text on them, the last result kept on every error, the word list following the model, "your
runs", and figures that keep their room at 800 px.

Expected values come from the run's raw numbers (its ``.json`` twin's ``values``, ``clean``,
``corrupted``) by hand formulas. Waits are polls with generous timeouts: CI machines are loaded.
"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from helpers import build_tiny_model, build_word_tokenizer  # noqa: E402
from test_explore_browser import THREE_PAIRS, compute_figure1, open_explore  # noqa: E402

SLOW = 60_000  # ms: a CI machine may be busy
TRACE = "() => { const gd = document.getElementById('heatmap'); return gd && gd.data ? {zmin: gd.data[0].zmin, " \
        "zmax: gd.data[0].zmax, title: gd.layout.title.text, traces: gd.data.length, text: gd.data[0].text} : null; }"


def new_page(browser, url: str, width: int = 1280, height: int = 900):
    ctx = browser.new_context(base_url=url, viewport={"width": width, "height": height})
    ctx.set_default_timeout(SLOW)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    return ctx, page, errors


def poll(page, script: str, check=lambda value: value is not None, tries: int = 300, arg=None):
    """Evaluate ``script`` until ``check`` holds (every 200 ms, up to a minute); its value."""
    value = None
    for _ in range(tries):
        value = page.evaluate(script, arg) if arg is not None else page.evaluate(script)
        if check(value):
            return value
        page.wait_for_timeout(200)
    raise AssertionError(f"never true: {script} -> {value!r}")


def shares(twin: dict) -> list[float]:
    """Each cell's share of the clean−corrupted gap restored (denoising): (v − corrupted) / (clean − corrupted)."""
    gap = twin["clean"] - twin["corrupted"]
    return [(v - twin["corrupted"]) / gap for row in twin["values"] for v in row]


def percent2(x: float) -> str:
    p = abs(x) * 100
    return f"{round(p):d}%" if p >= 9.5 else f"{p:.2g}%"


@pytest.fixture(scope="module")
def default_url(default_model_or_none, showcase):
    if default_model_or_none is None:
        pytest.skip("the shipped default model's weights are not here")
    return showcase[0]


def test_the_receivers_example_is_under_the_floor_and_drawn_on_the_gap(browser, default_url):
    """Path patching on the IOI example (8 mixed-order pairs) with receivers L3H0.q L3H5.k: its largest
    effect is about 0.02% of the gap. The page says so above the plot and draws it on −1..1."""
    ctx, page, errors = new_page(browser, default_url)
    try:
        page.goto("/?preset=ioi-heads")
        page.locator("[name=method]").select_option("path_patching")
        page.locator("[name=receivers]").fill("L3H0.q L3H5.k")
        notice = page.locator("#floor-notice")
        expect(notice).to_be_visible(timeout=120_000)
        run_id = page.locator(".result").get_attribute("data-run-id")
        twin = page.request.get(f"/runs/{run_id}.json").json()
        assert twin["spec"]["method"] == "path_patching" and len(twin["prompts"]) == 8
        assert [(r["layer"], r["head"], r["input"]) for r in twin["spec"]["receivers"]] == [(3, 0, "q"), (3, 5, "k")]
        gap = twin["clean"] - twin["corrupted"]
        largest = max(abs(s) for s in shares(twin))
        assert largest < 0.01  # under the floor, by hand
        expect(notice).to_contain_text("Under the floor")
        expect(notice).to_contain_text(f"{percent2(largest)} of the {abs(gap):.3g} logit diff gap")
        drawn = poll(page, TRACE, lambda t: t is not None and t["zmin"] == -1)
        assert (drawn["zmin"], drawn["zmax"]) == (-1, 1)  # the gap either way: noise stays pale
        assert "data range" not in drawn["title"]
        # the hover's interval is of the shown number, in its units, with n
        assert drawn["text"][0][0].startswith("L0 H0: share ") and drawn["text"][0][0].endswith("(share of the gap)")
        assert "over n = 8 prompts" in drawn["text"][0][0]
        # the data range is a choice: its title says how much it magnifies
        page.locator("#scales a.scale[data-scale=data]").click()
        page.wait_for_url(re.compile(r"_scale=data"))
        zoomed = poll(page, TRACE, lambda t: t is not None and t["zmin"] != -1)
        values = shares(twin)
        assert zoomed["zmin"] == pytest.approx(min(values + [0.0])) and zoomed["zmax"] == pytest.approx(max(values + [0.0]))
        zoom = 1 / largest
        assert f"data range ×{zoom:.0f}: largest effect {percent2(largest)} of the gap" in zoomed["title"]
        assert not errors, errors
    finally:
        ctx.close()


def test_marked_cells_take_a_click_and_the_link_and_png_carry_the_view(browser, base_url):
    ctx, page, errors = new_page(browser, base_url)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    try:
        run_id = page.request.post("/api/runs", data={"prompts": THREE_PAIRS}).json()["id"]
        twin = page.request.get(f"/runs/{run_id}.json").json()
        # the cells whose 95% interval covers no effect (the corrupted run), by hand
        covered = [[lo <= twin["corrupted"] <= hi for lo, hi in zip(a, b)] for a, b in zip(twin["ci_low"], twin["ci_high"])]
        z = open_explore(page, f"/runs/{run_id}?_view=change")
        if any(any(row) for row in covered):
            fade = poll(page, "() => document.getElementById('heatmap').data[1].z")
            assert fade == [[1 if c else None for c in row] for row in covered]
            expect(page.locator("#mark-legend")).to_contain_text("cannot tell them from no effect")
            layer, head = next((l, h) for l, row in enumerate(covered) for h, c in enumerate(row) if c)
        else:
            expect(page.locator("#mark-legend")).to_have_count(0)
            layer, head = 1, 2
        # a click on a (marked) cell selects it: the overlay takes no click
        box = page.locator("#heatmap .nsewdrag").first.bounding_box()
        x = box["x"] + (head + 0.5) / len(z[0]) * box["width"]
        y = box["y"] + (layer + 0.5) / len(z) * box["height"]
        page.mouse.move(x, y)
        expect(page.locator("#heatmap .hoverlayer .hovertext")).to_contain_text(f"L{layer} H{head}")
        page.mouse.click(x, y)
        page.wait_for_url(re.compile(rf"_layer={layer}&_head={head}"))
        expected = f"{base_url}/runs/{run_id}?_view=change&_scale=data&_layer={layer}&_head={head}"
        expect(page.locator("#share-link")).to_have_value(expected)
        page.locator(".copy-link").click()
        expect(page.locator(".copy-link")).to_have_text("Copied!")
        assert page.evaluate("navigator.clipboard.readText()") == expected
        # the view links keep the selection too
        assert page.locator("#views a.view", has_text="raw metric").get_attribute("href") == (
            f"/runs/{run_id}?_view=raw&_layer={layer}&_head={head}")
        # the PNG: the whole claim and the run id, in a top margin sized to its lines
        page.evaluate("() => { const draw = Plotly.toImage; window.__drawn = null;"
                      " Plotly.toImage = (fig, opts) => { window.__drawn = {title: fig.layout.title.text, top: fig.layout.margin.t,"
                      " height: opts.height}; return draw(fig, opts); }; }")
        with page.expect_download(timeout=SLOW) as download:
            page.locator(".download-png").click()
        assert download.value.suggested_filename == f"patchstudio-{run_id}.png"
        drawn = page.evaluate("() => window.__drawn")
        text = re.sub(r"<[^>]+>", " ", drawn["title"]).replace("&gt;", ">")
        flat = " ".join(text.split())
        for part in ("activation patching (denoising: clean → corrupted run)", "attention head output (z)",
                     "metric: logit(answer) − logit(wrong)", "corruption: 3 pairs", "Evidence: restoration",
                     "3 prompt pairs, each cell their mean", f"Run {run_id} on default", f"_layer={layer}&amp;_head={head}"):
            assert part in flat, (part, flat)
        lines = drawn["title"].count("<br>") + 1
        assert drawn["top"] >= 14 * lines and drawn["height"] > drawn["top"] + 300
        assert not errors, errors
    finally:
        ctx.close()


def test_layer_bars_have_error_bars_and_no_text_on_them(browser, base_url):
    ctx, page, errors = new_page(browser, base_url)
    try:
        run_id = page.request.post("/api/runs", data={"prompts": THREE_PAIRS, "component": "layer"}).json()["id"]
        page.goto(f"/runs/{run_id}")
        expect(page.locator("#heatmap .main-svg").first).to_be_visible()
        expect(page.locator("#heatmap .errorbar")).to_have_count(2)  # one per layer, drawn
        expect(page.locator("#heatmap .bars .point text")).to_have_count(0)  # nothing printed on a bar
        twin = page.request.get(f"/runs/{run_id}.json").json()
        gap = twin["clean"] - twin["corrupted"]
        ends = [sorted(((lo - twin["corrupted"]) / gap, (hi - twin["corrupted"]) / gap)) for lo, hi in zip(twin["ci_low"], twin["ci_high"])]
        drawn = page.evaluate("() => document.getElementById('heatmap').layout.yaxis.range")
        assert drawn == pytest.approx([min([-1.0] + [a for a, _ in ends]), max([1.0] + [b for _, b in ends])])  # the gap, and every bar
        assert not errors, errors
    finally:
        ctx.close()


def test_the_last_result_stays_on_every_error(browser, base_url):
    ctx, page, errors = new_page(browser, base_url)
    try:
        open_explore(page)
        run_id = page.locator(".result").get_attribute("data-run-id")
        # a prompt over the server's limit: the message beside the field, the result kept and dimmed
        page.locator("#clean").fill("Mary " * 500)
        expect(page.locator("#err-clean")).to_contain_text("characters long; the limit is 2,000")
        expect(page.locator("#heatmap .main-svg").first).to_be_visible()
        expect(page.locator(".results-panel .result")).to_have_css("opacity", "0.45")
        expect(page.locator("#error-box .if-result")).to_be_visible()  # "the result below" is there
        # a refused fragment (a position this result does not have): above the result, not over it
        page.evaluate("id => htmx.ajax('GET', '/runs/' + id + '?_pos=99', {target: '#results', swap: 'innerHTML'})", run_id)
        expect(page.locator("#result-status .error")).to_contain_text("_pos does not apply")
        expect(page.locator("#result-status")).to_contain_text("The result below is the last one that ran")
        expect(page.locator(f".result[data-run-id='{run_id}']")).to_have_count(1)
        # the next result clears the message
        page.evaluate("id => htmx.ajax('GET', '/runs/' + id + '?_view=raw', {target: '#results', swap: 'innerHTML'})", run_id)
        expect(page.locator("#result-status .error")).to_have_count(0)
        expect(page.locator("#views a.view.active")).to_have_text("raw metric")
        # with no result on the page, no error speaks of one
        page.goto("/?preset=nope")
        expect(page.locator("#error-box")).to_be_visible()
        expect(page.locator("#error-box .if-result")).to_be_hidden()
        assert not errors, errors
    finally:
        ctx.close()


def test_the_word_list_follows_the_model(browser, browser_model, tmp_path, serve_app):
    other = build_tiny_model(build_word_tokenizer(tmp_path / "other-tok", words=["Kevin", "Frank", "sat", "by", "the", "sea"]))
    with serve_app({"default": browser_model, "other": other}, tmp_path) as url:
        ctx, page, errors = new_page(browser, url)
        try:
            page.goto("/")
            expect(page.locator("#vocabulary summary")).to_contain_text("Words this model knows")
            first = page.locator("#vocabulary summary").inner_text()
            assert first != "Words this model knows (6)"
            page.locator("[name=model]").select_option("other")
            expect(page.locator("#vocabulary summary")).to_have_text("Words this model knows (6)")
            names = page.evaluate("() => [...document.querySelectorAll('#known-names option')].map(o => o.value)")
            assert names == ["Kevin", "Frank"]  # the answers' autocomplete
            page.locator("[name=model]").select_option("default")
            expect(page.locator("#vocabulary summary")).to_have_text(first)
            assert not errors, errors
        finally:
            ctx.close()


def test_your_runs_are_this_browsers(browser, base_url):
    mine, page, errors = new_page(browser, base_url)
    theirs, other, other_errors = new_page(browser, base_url)
    try:
        open_explore(page)
        first = page.locator(".result").get_attribute("data-run-id")
        page.locator("[name=metric]").select_option("loss")
        page.wait_for_function("id => document.querySelector('.result').dataset.runId !== id", arg=first)
        asked = page.locator(".result").get_attribute("data-run-id")
        expect(page.locator("#your-runs li.your-run").first).to_have_attribute("data-run-id", asked)  # updated in place
        other.goto("/")
        expect(other.locator("#your-runs")).to_contain_text("The runs you ask for in this browser are listed here")
        expect(other.locator(f"#recent-runs li[data-run-id='{asked}']")).to_have_count(1)  # everyone's
        page.reload()
        expect(page.locator(f"#your-runs li.your-run[data-run-id='{asked}']")).to_have_count(1)
        assert not errors and not other_errors, (errors, other_errors)
    finally:
        mine.close()
        theirs.close()


def bbox(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, selector
    return found


@pytest.mark.parametrize("width", [800, 1280, 1600])
def test_figures_keep_their_room(browser, base_url, width):
    ctx, page, errors = new_page(browser, base_url, width, 1000)
    try:
        open_explore(page)
        run_id = page.locator(".result").get_attribute("data-run-id")
        assert bbox(page, "#heatmap .nsewdrag")["width"] >= 300  # the cells, not the colour bar, get the room
        compute_figure1(page)
        expect(page.locator("#figure1-plot .main-svg").first).to_be_visible()
        plot = bbox(page, "#figure1-plot")
        for i in range(4):  # every bar's label inside the figure (the last one was cut at 800 px)
            label = bbox(page, f"#figure1-plot .xtick >> nth={i}")
            assert plot["x"] <= label["x"] and label["x"] + label["width"] <= plot["x"] + plot["width"] + 1, (i, label, plot)
        page.goto(f"/runs/{run_id}/attention?layer=0&head=1")
        if page.locator("#compute-attention button").count():
            page.locator("#compute-attention button").click()
        expect(page.locator("#attention-clean .main-svg").first).to_be_visible()
        assert bbox(page, "#attention-clean .nsewdrag")["width"] >= 250  # was 80 px at 800
        page.goto("/")
        page.locator("[name=direction]").select_option("noise")
        page.wait_for_function("id => document.querySelector('.result').dataset.runId !== id", arg=run_id)
        second = page.locator(".result").get_attribute("data-run-id")
        page.goto(f"/compare?a={run_id}&b={second}")
        expect(page.locator("#compare-a .main-svg").first).to_be_visible()
        cells, title = bbox(page, "#compare-a .nsewdrag"), bbox(page, "#compare-a .cbtitle")
        assert title["width"] < cells["width"] / 2 and title["height"] < cells["height"], (title, cells)
        assert page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth") <= 0
        assert not errors, errors
    finally:
        ctx.close()
