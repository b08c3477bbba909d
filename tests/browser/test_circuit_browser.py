"""The circuit view in a real browser: build the IOI circuit from its example, move the top-k slider
(the graph redraws without a request), check the faithfulness curve's end points, check that nothing
overflows at 800 px, click an edge and land on its exact run."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from test_explore_browser import wait_for_new_run  # noqa: E402

FAITHFULNESS = "() => { const gd = document.getElementById('faithfulness-plot'); return gd && gd.data ? gd.data : null; }"
# widths that must not overflow: the page and the results panel (their scroll and visible widths), and the
# graph's SVG, the faithfulness plot and the edge table's left and right edges against their figure or panel
LAYOUT = """() => { const d = document.documentElement, panel = document.querySelector('.results-panel');
  const lr = (id) => { const r = document.getElementById(id).getBoundingClientRect(); return [r.left, r.right]; };
  const svg = document.getElementById('circuit-svg').getBoundingClientRect();
  return { page: [d.scrollWidth, d.clientWidth], panel: [panel.scrollWidth, panel.clientWidth],
           panelBox: [panel.getBoundingClientRect().left, panel.getBoundingClientRect().right],
           svg: [svg.left, svg.right], graph: lr('circuit-graph'), plot: lr('faithfulness-plot'),
           faithfulness: lr('faithfulness'), table: lr('edge-table') }; }"""


@pytest.fixture
def circuit_url(default_model_or_none, serve_app, tmp_path_factory):
    if default_model_or_none is None:
        pytest.skip("the IOI example needs the shipped default model")
    with serve_app(default_model_or_none, tmp_path_factory.mktemp("circuit-db")) as url:
        yield url


def test_build_the_ioi_circuit_move_the_slider_and_open_an_edge(browser, circuit_url):
    ctx = browser.new_context(base_url=circuit_url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto("/?preset=ioi-circuit")
        first = page.url
        page.locator("#spec-form button[type=submit]").click()
        run_url = wait_for_new_run(page, first)
        twin = page.request.get(f"{run_url}.json").json()
        expect(page.locator("#circuit-svg")).to_be_visible()
        edges = page.locator("#circuit-svg a.edge")
        expect(edges).to_have_count(20)  # the spec's top_k
        top = [twin["labels"]["edge"][i] for i in twin["extras"]["ranking"]]
        assert {edges.nth(i).get_attribute("data-name") for i in range(20)} == set(top[:20])

        # the slider redraws the top k from the page's data: no request
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.locator("#circuit-k").fill("5")
        expect(page.locator("#circuit-k-value")).to_have_text("5")
        expect(edges).to_have_count(5)
        page.locator("#circuit-k").fill("60")
        expect(edges).to_have_count(60)
        assert {edges.nth(i).get_attribute("data-name") for i in range(60)} == set(top[:60])
        assert requests == []

        # the faithfulness curve: 0.1% ... 100% of the edges, 1 at the full model; the empty circuit is
        # the corrupted run (0 by definition, its metric that run's)
        page.wait_for_function(f"({FAITHFULNESS})() !== null")
        curve = page.evaluate(FAITHFULNESS)[-1]
        assert curve["x"][0] == pytest.approx(0.001) and curve["x"][-1] == pytest.approx(1.0)
        assert curve["y"][-1] == pytest.approx(1.0, abs=1e-9)
        assert curve["y"] == pytest.approx(twin["extras"]["faithfulness"]["curve"], abs=1e-9)
        expect(page.locator("#faith-last")).to_have_text("1.000")
        assert page.locator("#metric-empty").inner_text() == page.locator("#corrupted-value").inner_text()

        # at 800 px (the results panel is then ~450 px wide) nothing is wider than its place: neither the
        # page nor the results panel scrolls sideways (the prompts' token table made the panel do so), the
        # graph redrawn within its figure, the faithfulness plot within its own, the edge table within the panel
        page.set_viewport_size({"width": 800, "height": 3200})
        for _ in range(50):  # the graph redraws 150 ms after a resize
            layout = page.evaluate(LAYOUT)
            if layout["svg"][1] <= layout["graph"][1] + 1:
                break
            page.wait_for_timeout(100)
        assert layout["page"][0] <= layout["page"][1], layout
        assert layout["panel"][0] <= layout["panel"][1], layout
        for inner, outer in (("svg", "graph"), ("plot", "faithfulness"), ("graph", "panelBox"), ("faithfulness", "panelBox"),
                             ("table", "panelBox")):
            assert layout[outer][0] - 1 <= layout[inner][0] and layout[inner][1] <= layout[outer][1] + 1, (inner, layout)
        page.set_viewport_size({"width": 1280, "height": 900})

        # an edge's link: the cost page (nothing computed), then its exact run
        name = top[0]
        page.locator(f'#circuit-svg a.edge[data-name="{name}"]').dispatch_event("click")
        page.wait_for_url(re.compile(r"/runs/[0-9a-f]{16}/edges\?name="))
        expect(page.locator("#circuit-link")).to_contain_text(f"Exact patching of edge {name} alone")
        page.locator("#compute-link").click()
        page.wait_for_url(re.compile(r"/runs/[0-9a-f]{16}$"))
        assert page.url != run_url
        expect(page.locator(".claim")).to_contain_text(f"exact patching of edge {name}, each alone")
        exact = twin["extras"]["exact"]
        value = exact["values"][exact["edges"].index(twin["extras"]["ranking"][0])]
        expect(page.locator("#edge-values .edge-value")).to_have_text(f"{value:.4f}")
        # back on the circuit, the same edge now goes straight to its stored run
        page.goto(run_url)
        page.locator(f'#circuit-svg a.edge[data-name="{name}"]').dispatch_event("click")
        page.wait_for_url(re.compile(r"/runs/[0-9a-f]{16}$"))
        expect(page.locator(".claim")).to_contain_text(f"exact patching of edge {name}, each alone")
        assert not errors, errors
    finally:
        ctx.close()
