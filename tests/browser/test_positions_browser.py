"""Positions by role in a real browser: the mixed-order IOI example swept per position shows IO, S1, S2
and END on its axis with values equal to a plain-hook reference that patches each role's own token
(issue 20); chosen positions "S2 and END" give exactly those two (issue 23)."""

from __future__ import annotations

import re

import pytest
import torch

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

import references as R  # noqa: E402
from test_explore_browser import open_explore, wait_for_new_run  # noqa: E402

HEATMAP_X = "() => { const gd = document.getElementById('heatmap'); return gd && gd.data ? gd.data[0].x : null; }"
HEATMAP_Z = "() => document.getElementById('heatmap').data[0].z"
KEY_ROLES = ("IO", "S1", "S2", "END")


@pytest.fixture
def ioi_server(default_model_or_none, serve_app, tmp_path_factory):
    """The shipped default model (its IOI example uses the generator's names), on a server of its own."""
    if default_model_or_none is None:
        pytest.skip("the default model's weights are not in this checkout")
    with serve_app(default_model_or_none, tmp_path_factory.mktemp("roles-db")) as url:
        yield url


def heatmap_x_once(page, want: str) -> list[str]:
    """The heatmap's x labels once one of them starts with ``want`` (the new run drawn)."""
    page.wait_for_function(f"w => {{ const x = ({HEATMAP_X})(); return x !== null && x.some(l => l.startsWith(w)); }}", arg=want)
    return page.evaluate(HEATMAP_X)


def located(model, pair) -> dict[str, int]:
    """IO, S1, S2 and END found by hand: the answer's token, the wrong answer's two, the last."""
    tokens = [model.tokenizer.decode([t]).strip() for t in model.to_tokens(pair["clean"])[0].tolist()]
    s = [i for i, t in enumerate(tokens) if t == pair["wrong"]]
    return {"IO": tokens.index(pair["answer"]), "S1": s[0], "S2": s[1], "END": len(tokens) - 1}


def test_mixed_order_ioi_example_per_position_shows_roles_equal_to_plain_hooks(browser, ioi_server):
    from patchstudio.models.registry import load_model

    context = browser.new_context(base_url=ioi_server, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(60_000)  # a loaded CI machine
    page = context.new_page()
    try:
        page.goto("/?preset=ioi-heads")  # 8 generated IOI pairs, ABBA and BABA alternating; a GET never computes
        expect(page.locator("#results")).to_contain_text(re.compile(r"results appear here|clean"))
        if page.locator("#heatmap").count() == 0:
            page.locator("#spec-form button[type=submit]").click()
            page.wait_for_url(re.compile(r"/runs/"))
        expect(page.locator("#heatmap .main-svg").first).to_be_visible()
        first = page.url
        page.select_option("[name=component]", "resid_pre")  # a choice runs at once
        wait_for_new_run(page, first)
        second = page.url
        page.select_option("[name=positions]", "each")
        wait_for_new_run(page, second)
        x = heatmap_x_once(page, "IO")
        columns = {role: next(i for i, label in enumerate(x) if label.split(" ")[0] == role) for role in KEY_ROLES}
        z = page.evaluate(HEATMAP_Z)  # the share of the gap, per layer and role
        run = page.evaluate("async () => (await (await fetch(location.pathname + '.json')).json())")
    finally:
        context.close()
    prompts = run["spec"]["prompts"]
    # the reference: a model of its own (the server's is shared), one full forward pass per layer, role and pair
    model = load_model("default")
    assert {located(model, p)["IO"] for p in prompts} == {2, 4}  # both name orders: by index, IO and S1 would mix
    pairs = R.pairs_of(model, prompts)
    clean, corrupted = R.baselines(model, pairs, "logit_diff")
    n_layers = int(model.cfg.n_layers)
    for role, column in columns.items():
        for layer in range(n_layers):
            name = R.hook_name("resid_pre", layer)
            total = 0.0
            for prompt, pair in zip(prompts, pairs):
                hook = R.set_at("resid_pre", R.cache_of(model, pair.clean, [name])[name], pair.clean.shape[1],
                                located(model, prompt)[role], None)
                with torch.no_grad():
                    total += float(R.score(model, pair.corrupted, pair, "logit_diff", [(name, hook)]))
            share = (total / len(pairs) - corrupted) / (clean - corrupted)
            assert z[layer][column] == pytest.approx(share, abs=1e-4), (role, layer)
    assert [r["n"] for r in run["roles"]] == [len(prompts)] * len(run["roles"])


def test_chosen_positions_s2_and_end_give_exactly_those(page):
    open_explore(page)
    first = page.url
    page.select_option("[name=component]", "resid_pre")
    wait_for_new_run(page, first)
    second = page.url
    page.fill("[name=positions_at]", "S2 and END")
    page.select_option("[name=positions]", "chosen")
    wait_for_new_run(page, second)
    x = heatmap_x_once(page, "S2")
    assert [label.split(" ")[0] for label in x] == ["S2", "END"]
    assert all(len(row) == 2 for row in page.evaluate(HEATMAP_Z))
    page.reload()  # the run's own page: its stored spec, back in the form
    expect(page.locator("[name=positions_at]")).to_have_value("END, S2")
    expect(page.locator("[name=positions]")).to_have_value("chosen")
