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
        examples = re.search(r'<nav class="examples".*?</nav>', home, re.S).group(0)
        assert 'href="/?preset=ioi-heads"' in examples and 'href="/?preset=no-self-repair"' in examples
        assert 'href="/?preset=self-repair"' not in examples  # its model (hydra) is not offered here
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
        assert "no example &#39;nope&#39; on this server; the examples are: ioi-heads, ioi-circuit, no-self-repair" in response.text


def test_presets_are_offered_by_model():
    assert [p.name for p in offered(["default"])] == ["ioi-heads", "ioi-circuit", "no-self-repair"]
    assert [p.name for p in offered(["default", "hydra"])] == ["ioi-heads", "ioi-circuit", "self-repair", "no-self-repair"]
    assert [p.name for p in offered(["hydra"])] == ["self-repair"]
    assert offered(["gpt2"]) == []  # a server without the model its examples need offers none


def test_the_self_repair_examples_are_the_write_ups_rows():
    """The examples' experiments are the ones the write-ups pin: the default model's in
    test_default_model_circuit.py, the hydra model's in test_self_repair_writeup.py."""
    spec = spec_from_form({**DEFAULT_FORM, **PRESETS["no-self-repair"].form}).spec
    assert spec.id == "a7b264363d69b1e5"
    hydra = spec_from_form({**DEFAULT_FORM, **PRESETS["self-repair"].form}).spec
    assert hydra.model == "hydra" and hydra.model_dump(exclude={"model"}) == spec.model_dump(exclude={"model"})
