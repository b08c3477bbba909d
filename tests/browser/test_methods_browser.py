"""Each intervention method from the browser: pick it, fill its fields, see its result and its link."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from test_explore_browser import RUN_URL, heatmap_z, open_explore, wait_for_new_run  # noqa: E402

NUMBER = re.compile(r"^[+-]\d+\.\d{4}$")
# docs/self-repair.md's figures (tests/models/test_self_repair_writeup.py pins them on the engine)
HYDRA_SINGLE_ID, HYDRA_PAIRED_ID = "1d4a927b978af484", "97cdb9ff30e8465c"
HYDRA_TE, HYDRA_DE, HYDRA_PAIRED_TE = -0.7800, -1.2522, -3.0678


@pytest.mark.parametrize(
    "method, fields, claim",
    [
        ("ablation", {}, "mean ablation of the clean run"),
        ("attribution_patching", {"steps": "4"}, "attribution patching (integrated-gradients estimate, 4 steps"),
        ("path_patching", {"receivers": "L1H2.q"}, "path patching from each head to L1H2.q"),
        ("self_repair", {"targets": "L0H1", "compensator": "L1H2"}, "self-repair after mean-ablating L0H1"),
        ("input_influence", {"steps": "8"}, "integrated gradients from the corrupted prompt, 8 steps"),
        ("logit_lens", {}, "logit lens of the clean run"),
        ("logit_attribution", {}, "direct logit attribution of the clean run"),
    ],
)
def test_each_method_runs_from_the_form_and_gets_a_permalink(page, method, fields, claim):
    open_explore(page)
    first = page.url
    page.select_option("[name=method]", method)
    for name, value in fields.items():
        page.fill(f"[name={name}]", value)
    page.locator("#spec-form button[type=submit]").click()
    wait_for_new_run(page, first)  # the method switch itself already runs (and links) an experiment
    expect(page.locator(".claim")).to_contain_text(claim)
    if method == "self_repair":  # the claim names the targets; the paired drop shows the compensator arrived
        expect(page.locator("#paired-value")).to_have_text(re.compile(r"-?\d+\.\d{4}"))
    url = page.url
    page.wait_for_function("() => { const gd = document.getElementById('heatmap'); return gd && gd.data; }")
    if method == "input_influence":  # a bar per clean token
        bars = page.evaluate("() => document.getElementById('heatmap').data[0].y")
        assert len(bars) == 15
    elif method == "logit_lens":  # every layer's input and the final stream, by position; no Figure 1
        z = heatmap_z(page)
        assert len(z) == 3 and len(z[0]) == 15
        expect(page.locator("#lens-unit")).to_have_text("logits (logit(answer) − logit(wrong))")
        assert page.locator("#figure1").count() == 0
    else:
        z = heatmap_z(page)
        assert len(z) == 2 and len(z[0]) == 4
    if method == "logit_attribution":  # every component as a bar, and the parts add up
        expect(page.locator("#parts-plot .main-svg").first).to_be_visible()
        expect(page.locator("#parts-check")).to_contain_text("they agree")
    if method == "self_repair":
        expect(page.locator("#repair-plot .main-svg").first).to_be_visible()
    # the permalink (the address bar, once this result is shown) shows the same result, with the method's fields back in the form
    assert RUN_URL.search(url)
    fresh = page.context.new_page()
    fresh.goto(url)
    expect(fresh.locator(".claim")).to_contain_text(claim)
    assert fresh.locator("[name=method]").input_value() == method
    for name, value in fields.items():
        assert fresh.locator(f"[name={name}]").input_value().replace(",", "") == value
    fresh.close()


def test_pair_ablate_a_compensator_in_one_click(page, browser_model):
    """Self-repair lists the compensators; clicking one's button reruns the experiment with it as the
    compensator and shows the paired ablation beside the two single ones, as the engine computes them."""
    from patchstudio import analysis
    from patchstudio.engine.run import run

    open_explore(page)
    first = page.url
    page.select_option("[name=method]", "self_repair")
    page.fill("[name=targets]", "L0H1")
    page.fill("[name=compensator]", "")
    page.select_option("[name=ablation]", "zero")
    page.locator("#spec-form button[type=submit]").click()
    single_url = wait_for_new_run(page, first)
    expect(page.locator(".claim")).to_contain_text("self-repair after zero-ablating L0H1")
    expect(page.locator("#paired-table")).to_have_count(0)
    pair = {"clean": page.locator("[name=clean]").input_value(), "corrupted": "", "answer": "", "wrong": ""}
    button = page.locator("button.pair-ablate").first
    name = button.get_attribute("data-compensator")
    button.click()
    wait_for_new_run(page, single_url)
    assert page.locator("[name=compensator]").input_value() == name
    expect(page.locator("#paired-table")).to_be_visible()
    expect(page.locator("#paired-table caption")).to_contain_text("change in logit(answer) − logit(wrong) from the clean run (0 = no effect)")
    # the numbers on screen are the engine's for the same spec, fetched from the run's .json twin
    body = page.request.get(page.url + ".json").json()
    spec = body["spec"]
    assert spec["compensator"] == {"layer": int(name[1]), "head": int(name[3])} and pair["clean"] in spec["prompts"][0]["clean"]
    expected = run(browser_model, spec)
    x = expected.extras
    expect(page.locator("#single-te")).to_have_text(f"{x['total_effect']:+.4f}")
    expect(page.locator("#compensator-te")).to_have_text(f"{x['compensator_total_effect']:+.4f}")
    expect(page.locator("#paired-value")).to_have_text(f"{x['paired_total_effect']:+.4f}")
    expect(page.locator("#paired-excess")).to_contain_text(f"{x['paired_excess']:+.4f}")
    assert name in [c.name for c in analysis.top_compensators(expected)]


REFERENCE = ["When Alice and Bob went to the garden , Bob gave a book to",
             "When Tom and Anna went to the school , Anna gave a ring to"]


def test_own_reference_prompts_from_the_form(page):
    open_explore(page)
    page.select_option("[name=method]", "ablation")
    expect(page.locator(".claim")).to_contain_text("mean ablation of the clean run")
    expect(page.locator("#evidence")).to_contain_text("Ablation reference: ")
    prompts = page.locator("[name=reference_prompts]")
    expect(prompts).to_be_visible()
    assert prompts.evaluate("el => el.readOnly")  # generated from the template: nothing to type
    page.select_option("[name=reference]", "own")
    assert not prompts.evaluate("el => el.readOnly")
    expect(page.locator("#err-reference_prompts")).to_contain_text("the reference prompt list is empty")  # beside it
    before = page.url
    prompts.fill("\n".join(REFERENCE))
    wait_for_new_run(page, before)
    expect(page.locator("#evidence")).to_contain_text("Ablation reference: 2 reference prompt(s) given in the spec.")
    expect(page.locator("#err-reference_prompts")).to_have_text("")
    fresh = page.context.new_page()  # the link brings the prompts back into the form
    fresh.goto(page.url)
    assert fresh.locator("[name=reference]").input_value() == "own"
    assert fresh.locator("[name=reference_prompts]").input_value() == "\n".join(REFERENCE)
    fresh.close()
    page.select_option("[name=ablation]", "zero")  # zero ablation has no reference: refused beside the field
    expect(page.locator("#err-reference")).to_contain_text("zero ablation uses no reference prompts")


def test_input_influence_baseline_from_the_form(page):
    open_explore(page)
    page.select_option("[name=method]", "input_influence")
    expect(page.locator(".claim")).to_contain_text("gradient × (input − corrupted input)")
    expect(page.locator("[name=baseline]")).to_be_visible()
    before = page.url
    page.select_option("[name=baseline]", "zero")
    wait_for_new_run(page, before)
    expect(page.locator(".claim")).to_contain_text("input influence of each clean token (gradient × input)")


@pytest.fixture(scope="module")
def hydra_model_or_none():
    """The shipped hydra model when its weights are present, else None."""
    from patchstudio.models.default_model import HYDRA_DIR, WEIGHTS_FILE

    if not (HYDRA_DIR / WEIGHTS_FILE).exists():
        return None
    from patchstudio.models.registry import load_model

    return load_model("hydra")


def test_the_self_repair_example_in_two_clicks_then_pair_ablate(browser, default_model_or_none, hydra_model_or_none,
                                                               serve_app, tmp_path):
    """From the home page: the "Self-repair view" example (the hydra model), then Run; the page shows
    docs/self-repair.md's numbers: TE smaller than DE (compensation), L3H4 the top compensator with
    a direct-effect growth of at least 30% of the target's DE; one click pair-ablates it, and the
    paired drop is far more than the two single ones."""
    if default_model_or_none is None or hydra_model_or_none is None:
        pytest.skip("needs the shipped default and hydra models' weights")
    from patchstudio import analysis
    from patchstudio.engine.run import run

    models = {"default": default_model_or_none, "hydra": hydra_model_or_none}
    with serve_app(models, tmp_path) as url:
        ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(30_000)
        try:
            page = ctx.new_page()
            page.goto("/")
            page.locator("nav.examples a", has_text="Self-repair view").click()  # click 1
            expect(page.locator("#preset-note")).to_contain_text("On the hydra model, mean-ablate L2H2")
            page.locator("#spec-form button[type=submit]").click()  # click 2
            page.wait_for_url(RUN_URL)
            assert page.url.endswith(f"/runs/{HYDRA_SINGLE_ID}")
            expect(page.locator("#te-value")).to_have_text(NUMBER)
            te = float(page.locator("#te-value").inner_text())
            de = float(page.locator("#de-value").inner_text())
            # the write-up's pinned figures (float noise between batchings: ~1e-4)
            assert te == pytest.approx(HYDRA_TE, abs=2e-3) and de == pytest.approx(HYDRA_DE, abs=2e-3)
            expect(page.locator("#response-word")).to_have_text("compensation")
            expect(page.locator("#repair-plot .main-svg").first).to_be_visible()
            title = page.evaluate("() => document.getElementById('heatmap').data[0].colorbar.title.text")
            assert title.replace("<br>", " ") == "change in direct effect (logit diff); 0 = none"
            # the top compensator, as the page ranks and shows it: L3H4, growth >= 30% of |DE|
            first = page.locator("#compensators tr").nth(1).locator("td")
            expect(first.nth(0)).to_have_text("L3H4")
            growth, share = float(first.nth(1).inner_text()), float(first.nth(2).inner_text().rstrip("%"))
            assert growth >= 0.3 * abs(de) and share >= 30
            single = run(hydra_model_or_none, page.request.get(page.url + ".json").json()["spec"])
            top = next(c for c in analysis.top_compensators(single) if c.head is not None)
            assert top.name == "L3H4" and growth == pytest.approx(top.change, abs=1e-3)
            page.locator("button.pair-ablate[data-compensator='L3H4']").click()
            page.wait_for_url(lambda u: bool(RUN_URL.search(u)) and not u.endswith(HYDRA_SINGLE_ID))
            assert page.url.endswith(f"/runs/{HYDRA_PAIRED_ID}")
            paired = run(hydra_model_or_none, page.request.get(page.url + ".json").json()["spec"])
            assert (paired.spec.compensator.layer, paired.spec.compensator.head) == (3, 4)
            expect(page.locator("#paired-table")).to_be_visible()
            for cell, key in (("#single-te", "total_effect"), ("#compensator-te", "compensator_total_effect"),
                              ("#paired-value", "paired_total_effect"), ("#paired-excess", "paired_excess")):
                shown = float(page.locator(cell).inner_text().split()[0])
                assert shown == pytest.approx(paired.extras[key], abs=2e-3), cell
            assert float(page.locator("#paired-value").inner_text()) == pytest.approx(HYDRA_PAIRED_TE, abs=2e-3)
            excess = float(page.locator("#paired-excess").inner_text().split()[0])
            assert excess < -0.25 * abs(de)  # the pair costs clearly more than the two alone (negative: a drop)
            expect(page.locator("#paired-reading")).to_contain_text("more than the two single ablations together")
        finally:
            ctx.close()
