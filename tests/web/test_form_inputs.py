"""The form's inputs for what a number is measured against (ablation's reference prompts, input
influence's baseline), and degenerate input refused beside the field it comes from or warned about
on the page: through the form (a POST), as a user submits it."""

from __future__ import annotations

import html
import re

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine.metrics import SMALL_GAP
from patchstudio.engine.run import run
from web_helpers import HTMX, IOI, IOI_CORRUPTED, form

PAIR = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
REFERENCE = ["When Alice and Bob went to the garden , Bob gave a book to",
             "When Tom and Anna went to the school , Anna gave a ring to"]


def field_error(text: str, name: str) -> str:
    """The message in the error slot beside form field ``name`` ('' when it is empty)."""
    found = re.search(rf'<div class="field-error" id="err-{name}"[^>]*>(.*?)</div>', text, re.S)
    assert found is not None, f"no error slot for {name}"
    return html.unescape(found.group(1))


def only_error(text: str) -> tuple[str, str]:
    """(field, message) of the one filled error slot."""
    filled = [(name, html.unescape(msg)) for name, msg in re.findall(r'id="err-([a-z_]+)"[^>]*>([^<]+)</div>', text)]
    assert len(filled) == 1, filled
    return filled[0]


# --- reference prompts and baseline ---------------------------------------------------------------


@pytest.mark.parametrize("method, extra", [("ablation", {}), ("self_repair", {"targets": "L1H2"})])
def test_own_reference_prompts_from_the_form(client, tiny_model, method, extra):
    response = client.post("/explore", data=form(method=method, ablation="mean", reference="own",
                                                 reference_prompts="\n".join(REFERENCE) + "\n\n", **extra), headers=HTMX)
    spec = {"method": method, "prompts": [PAIR], "ablation": "mean", "reference": {"prompts": REFERENCE}}
    if method == "self_repair":
        spec["targets"] = [{"layer": 1, "head": 2}]
    expected = run(tiny_model, spec)
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    assert "Ablation reference: 2 reference prompt(s) given in the spec." in response.text
    page = client.get(response.headers["HX-Push-Url"]).text  # the stored spec shows back in the form
    assert '<option value="own" selected>my own prompts (below)</option>' in page
    assert f">{REFERENCE[0]}\n{REFERENCE[1]}</textarea>" in page
    default = client.post("/explore", data=form(method=method, ablation="mean", reference="auto",
                                                reference_prompts="ignored when generated", **extra), headers=HTMX)
    assert default.headers["HX-Push-Url"] == f"/runs/{run(tiny_model, {**spec, 'reference': 'auto'}).id}"


def test_reference_field_is_offered_only_to_methods_that_ablate(client):
    page = client.get("/").text
    for name, methods in (("reference", "ablation self_repair circuit"), ("reference_prompts", "ablation self_repair circuit"),
                          ("baseline", "input_influence")):
        slot = re.search(rf'<div class="method-field" data-methods="([^"]*)"[^>]*>\s*<label[^>]*>[^<]*\s*<(?:select|textarea) name="{name}"', page)
        assert slot is not None and slot.group(1) == methods, name
    assert "generated from the template (default)" in page and ">the corrupted prompt (default)</option>" in page


@pytest.mark.parametrize(
    "fields, where, message",
    [
        ({"reference": "own", "reference_prompts": "  \n"}, "reference_prompts", "the reference prompt list is empty"),
        ({"reference": "own", "reference_prompts": REFERENCE[0], "ablation": "zero"}, "reference",
         "zero ablation uses no reference prompts"),
        ({"reference": "own", "reference_prompts": "When Alice and Bob went to the garden"}, "reference_prompts",
         "reference prompt 1 is 9 tokens but the spec's prompts are 15"),
        ({"reference": "sometimes"}, "reference", "reference must be 'auto' or 'own'"),
    ],
    ids=["empty-list", "zero-ablation", "wrong-length", "unknown-choice"],
)
def test_bad_reference_is_refused_beside_its_field(client, fields, where, message):
    response = client.post("/explore", data=form(method="ablation", **fields), headers=HTMX)
    name, shown = only_error(response.text)
    assert name == where and message in shown
    assert "Cannot run this experiment as edited" in response.text


@pytest.mark.parametrize("baseline, claim", [("zero", "gradient × input"), ("corrupted", "gradient × (input − corrupted input)")])
def test_input_influence_baseline_from_the_form(client, tiny_model, baseline, claim):
    response = client.post("/explore", data=form(method="input_influence", steps="1", baseline=baseline), headers=HTMX)
    expected = run(tiny_model, {"method": "input_influence", "prompts": [PAIR], "steps": 1, "baseline": baseline})
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    assert f"input influence of each clean token ({claim})" in response.text
    page = client.get(response.headers["HX-Push-Url"]).text
    assert re.search(rf'<select name="baseline">.*?<option value="{baseline}" selected>', page, re.S)
    bad = client.post("/explore", data=form(method="input_influence", baseline="noise"), headers=HTMX)
    assert only_error(bad.text)[0] == "baseline"


# --- degenerate input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, where, message",
    [
        ({"auto_answers": "", "answer": "Mary", "wrong": " Mary"}, "wrong", "wrong is the answer itself ('Mary')"),
        ({"method": "self_repair", "targets": "L0H1 L1H2 L0H1"}, "targets", "target L0H1 is listed twice"),
        ({"method": "self_repair", "targets": "L0H1", "compensator": "L0H1"}, "compensator", "the compensator L0H1 is also a target"),
        ({"method": "path_patching", "receivers": "L1H2.q L1H2"}, "receivers", "receiver L1H2.q is listed twice"),
        ({"corruption": "custom", "corrupted": IOI, "metric": "normalized_logit_diff"}, "metric",
         "normalized_logit_diff is undefined here"),
    ],
    ids=["answer-is-wrong", "duplicate-targets", "compensator-is-target", "duplicate-receivers", "zero-gap-normalized"],
)
def test_degenerate_input_is_refused_beside_the_named_field(client, fields, where, message):
    response = client.post("/explore", data=form(**fields), headers=HTMX)
    assert response.headers.get("HX-Reswap") == "none"  # the last result stays; nothing new is pushed
    assert "HX-Push-Url" not in response.headers
    name, shown = only_error(response.text)
    assert name == where and message in shown, (name, shown)
    # the same refusal on a full page (no htmx), where the form is shown with it
    full = client.post("/explore", data=form(**fields))
    assert message in field_error(full.text, where)


def test_identical_prompts_are_a_visible_warning(client):
    response = client.post("/explore", data=form(corruption="custom", corrupted=IOI), headers=HTMX)
    warnings = re.search(r'<div class="warning" id="result-warnings" role="status">(.*?)</div>', response.text, re.S)
    assert warnings is not None
    assert "Prompt 1: the clean and corrupted prompts are the same tokens" in html.unescape(warnings.group(1))
    views = re.search(r'<div class="views" id="views">(.*?)</div>', response.text, re.S).group(1)
    assert "change from no effect" in views and "share of the gap" not in views  # no share of a zero gap is offered


def test_a_small_gap_is_a_visible_warning_with_its_threshold(client, tiny_model):
    result = run(tiny_model, {"prompts": [PAIR]})
    gap = result.clean - result.corrupted
    assert 0 < abs(gap) < SMALL_GAP["logit_diff"]  # the tiny random model barely separates the answers
    response = client.post("/explore", data=form(), headers=HTMX)
    text = html.unescape(response.text)
    assert 'id="result-warnings"' in text
    assert f"The clean–corrupted gap is {gap:.3g} logits, under 1:" in text
