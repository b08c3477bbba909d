"""The explore loop on a larger model (live.py): an expensive sweep's attribution estimate first, then
its exact result from a follow-up POST. The tiny model is made "large" by lowering the threshold
(``live_estimate_gflop``); the expected runs are built by hand and computed by the engine directly."""

from __future__ import annotations

import html
import json
import re

import pytest

from patchstudio.engine.methods.activation_patching import ActivationPatchingSpec
from patchstudio.engine.methods.attribution_patching import AttributionPatchingSpec
from patchstudio.engine.run import run
from patchstudio.specs import PromptPair
from web_helpers import HTMX, IOI, IOI_CORRUPTED, form, make_client

# the form's pair (swap the two names, answers guessed from the IOI shape), written out by hand
PAIR = PromptPair(clean=IOI, corrupted=IOI_CORRUPTED, answer="Mary", wrong="John")
SPEC = {"prompts": (PAIR,), "component": "head", "positions": "all", "metric": "logit_diff", "direction": "denoise"}


@pytest.fixture
def live_client(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model, live_estimate_gflop=0) as c:
        yield c


def follow_up_values(text: str) -> dict[str, str]:
    found = re.search(r"id=\"exact-follow-up\" hx-post=\"/explore\" hx-trigger=\"load[^\"]*\" hx-vals='([^']*)'", text)
    assert found, text[:2000]
    return json.loads(html.unescape(found.group(1)))


def assert_values_equal(twin: dict, result) -> None:
    got, want = twin["values"], result.values
    assert json.dumps(got) != "[]"
    flat_got = [v for row in got for v in (row if isinstance(row, list) else [row])]
    flat_want = [v for row in want for v in (row if isinstance(row, list) else [row])]
    assert flat_got == pytest.approx(flat_want, abs=1e-6)
    assert (twin["clean"], twin["corrupted"]) == pytest.approx((result.clean, result.corrupted), abs=1e-6)


def test_a_large_sweep_is_drawn_first_as_its_estimate_then_exact(live_client, tiny_model):
    estimate_spec, exact_spec = AttributionPatchingSpec(**SPEC), ActivationPatchingSpec(**SPEC)
    response = live_client.post("/explore", data=form(), headers=HTMX)
    assert response.status_code == 200
    text = html.unescape(response.text)
    cells = int(tiny_model.cfg.n_layers) * int(tiny_model.cfg.n_heads)  # one patched run per head
    assert f'data-run-id="{estimate_spec.id}" data-live="estimate"' in text
    assert (f"Estimate (attribution patching: gradient, 1 forward-and-backward pass instead of {cells} patched runs)"
            " — exact result on its way") in text
    assert "first-order (linear) estimate" in text and "the same metric, units and clean and corrupted baselines" in text
    assert f'href="/runs/{estimate_spec.id}"' in text
    assert "HX-Push-Url" not in response.headers  # the address waits for the exact result
    assert_values_equal(live_client.get(f"/runs/{estimate_spec.id}.json").json(), run(tiny_model, estimate_spec))
    assert live_client.get(f"/runs/{exact_spec.id}.json").status_code == 404  # nothing exact yet

    values = follow_up_values(response.text)
    exact = live_client.post("/explore", data=values, headers=HTMX)
    assert exact.status_code == 200
    text = html.unescape(exact.text)
    assert f'data-run-id="{exact_spec.id}" data-live="exact"' in text
    assert "Exact (activation patching: every cell its own patched run)" in text
    assert f'class="estimate-link" href="/runs/{estimate_spec.id}"' in text  # the page links both runs
    assert "exact-follow-up" not in text
    assert 'id="corrupted-field"' not in text and 'id="answer-fields"' not in text  # the form's fields are left alone
    assert exact.headers["HX-Push-Url"] == f"/runs/{exact_spec.id}"
    assert_values_equal(live_client.get(f"/runs/{exact_spec.id}.json").json(), run(tiny_model, exact_spec))

    again = html.unescape(live_client.post("/explore", data=form(), headers=HTMX).text)  # exact stored: no estimate
    assert f'data-run-id="{exact_spec.id}"' in again and "data-live" not in again


def test_the_small_model_path_is_unchanged(client, tiny_model):
    """The default threshold: the tiny model's sweep is drawn exact at once, as before."""
    exact_spec = ActivationPatchingSpec(**SPEC)
    response = client.post("/explore", data=form(), headers=HTMX)
    text = html.unescape(response.text)
    assert f'<div class="result" data-run-id="{exact_spec.id}">' in text
    assert "data-live" not in text and "exact-follow-up" not in text and "Estimate (" not in text
    assert response.headers["HX-Push-Url"] == f"/runs/{exact_spec.id}"
    assert_values_equal(client.get(f"/runs/{exact_spec.id}.json").json(), run(tiny_model, exact_spec))


@pytest.mark.parametrize("overrides", [
    {"component": "resid_mid"},  # attribution patching does not take it
    {"method": "ablation"},  # no attribution estimate of an ablation
])
def test_what_attribution_cannot_estimate_goes_straight_to_exact(live_client, overrides):
    text = html.unescape(live_client.post("/explore", data=form(**overrides), headers=HTMX).text)
    assert 'class="result"' in text and "data-live" not in text and "exact-follow-up" not in text


def test_a_form_post_without_htmx_is_exact_at_once(live_client):
    exact_spec = ActivationPatchingSpec(**SPEC)
    text = html.unescape(live_client.post("/explore", data=form()).text)
    assert f'data-run-id="{exact_spec.id}"' in text and "data-live" not in text


def test_a_refused_follow_up_leaves_the_estimate_and_the_form_alone(live_client):
    values = follow_up_values(live_client.post("/explore", data=form(), headers=HTMX).text)
    response = live_client.post("/explore", data={**values, "clean": "When Xavier and John went"}, headers=HTMX)
    assert response.status_code == 200 and response.headers["HX-Reswap"] == "none"
    assert 'id="error-box"' in response.text and 'id="corrupted-field"' not in response.text
