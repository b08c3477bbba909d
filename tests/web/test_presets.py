"""Worked examples: a preset's link fills the form with its experiment, computes nothing (a GET),
shows the stored result at once once someone ran it, and is offered only where its model is."""

from __future__ import annotations

import re

import pytest

from patchstudio.web.forms import DEFAULT_FORM, spec_from_form
from patchstudio.web.presets import PRESETS, offered
from web_helpers import HTMX, make_client


@pytest.fixture(scope="module")
def default_model():
    from patchstudio.models.registry import load_model

    return load_model("default")  # the family's names are in its vocabulary


def test_a_preset_fills_the_form_and_computes_nothing_until_run(tmp_path, default_model):
    with make_client(tmp_path, default_model) as client:
        home = client.get("/").text
        assert 'href="/?preset=ioi-heads"' in home and "self-repair" not in re.search(r'<nav class="examples".*?</nav>', home, re.S).group(0)
        page = client.get("/?preset=ioi-heads")
        assert page.status_code == 200
        assert '<input type="radio" name="source" value="family" checked>' in page.text
        assert 'data-source="family"' in page.text
        assert 'id="preset-note"' in page.text and "Press <strong>Run</strong>" in page.text
        assert 'id="heatmap"' not in page.text  # nothing stored, nothing computed by the GET
        assert client.get("/api/runs").json() == []
        # Run computes exactly the preset's experiment; the link then opens it at once
        form = {**DEFAULT_FORM, **PRESETS["ioi-heads"].form}
        expected = spec_from_form(form).spec
        ran = client.post("/explore", data=form, headers=HTMX)
        assert ran.headers["HX-Push-Url"] == f"/runs/{expected.id}"
        again = client.get("/?preset=ioi-heads").text
        assert 'id="heatmap"' in again and "Press <strong>Run</strong>" not in again


def test_an_unknown_preset_is_a_404_naming_the_examples(tmp_path, tiny_model):
    with make_client(tmp_path, tiny_model) as client:
        response = client.get("/?preset=nope")
        assert response.status_code == 404
        assert "no example &#39;nope&#39; on this server; the examples are: ioi-heads" in response.text
        # a preset whose model this server does not offer is not there either
        assert client.get("/?preset=self-repair").status_code == 404


def test_presets_are_offered_by_model():
    assert [p.name for p in offered(["default"])] == ["ioi-heads"]
    assert [p.name for p in offered(["default", "hydra"])] == ["ioi-heads", "self-repair"]
