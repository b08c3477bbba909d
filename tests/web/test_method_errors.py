"""One error path for every registered method: a wrong field comes back naming that field, from
the API and beside that field in the form, for each method the registry knows (not just two)."""

from __future__ import annotations

import re

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine.methods import METHODS
from patchstudio.specs import SpecBase
from patchstudio.web.forms import FIELDS
from patchstudio.web.methods import WEB_METHODS
from web_helpers import HTMX, form

# Valid values for fields a method requires (a new required field needs a line here).
REQUIRED = {"targets": [{"layer": 0, "head": 1}], "edges": ["input->a0.h0<q>"]}
WRONG = {"not": "a valid value"}  # no spec field accepts a JSON object of this shape


def _own_fields(method: str) -> list[str]:
    """The fields a method's spec adds to, or narrows from, the shared ones (all but prompts)."""
    cls = METHODS[method].spec
    return [f for f in cls.model_fields if f not in ("method", "schema_version", "prompts")]


def _valid(method: str) -> dict:
    cls = METHODS[method].spec
    data = {"method": method, "prompts": TINY_PAIRS}
    data.update({f: REQUIRED[f] for f, info in cls.model_fields.items() if info.is_required() and f != "prompts"})
    return data


CASES = [(m, f) for m in METHODS for f in _own_fields(m)]


def test_every_method_is_covered():
    assert {m for m, _ in CASES} == set(METHODS) == set(WEB_METHODS)
    assert all(issubclass(METHODS[m].spec, SpecBase) for m in METHODS)


@pytest.mark.parametrize("method, field", CASES, ids=[f"{m}.{f}" for m, f in CASES])
def test_api_names_the_wrong_field(client, method, field):
    assert client.post("/api/runs", json=_valid(method)).status_code == 200
    response = client.post("/api/runs", json={**_valid(method), field: WRONG})
    assert response.status_code == 422
    body = response.json()
    assert body["field"].split(".")[0] == field  # the spec's own path: no method tag in front
    assert [e["field"].split(".")[0] for e in body["errors"]] == [field] * len(body["errors"])
    assert body["detail"].startswith(f"invalid spec: {field}")
    assert "Value error," not in body["detail"]


@pytest.mark.parametrize(
    "method, spec_field, bad",
    [("path_patching", "receivers", [{"layer": 1, "head": 9, "input": "q"}]),
     ("self_repair", "targets", [{"layer": 7, "head": 0}]),
     ("path_patching", "receivers", [{"layer": -1, "head": 0, "input": "q"}])],
    ids=["receiver-head-missing", "target-layer-missing", "negative-layer"],
)
def test_nested_errors_name_their_field(client, method, spec_field, bad):
    response = client.post("/api/runs", json={**_valid(method), spec_field: bad})
    assert response.status_code == 422
    assert response.json()["field"].split(".")[0] == spec_field


# In the form: a bad value for each field a method shows lands in that field's error slot.
BAD_FORM_VALUE = {"select": "bogus", "number": "many", "text": "L?H?", "textarea": "When Mary went"}
# the box is read only for one's own reference prompts (a circuit reads them for mean-ablated
# faithfulness); the chosen positions only when positions are 'chosen'
FORM_CONTEXT = {"reference_prompts": {"reference": "own", "faithfulness": "mean"}, "positions_at": {"positions": "chosen"}}
FORM_CASES = [(m, f) for m, web in WEB_METHODS.items() for f in web.fields]


@pytest.mark.parametrize("method, field", FORM_CASES, ids=[f"{m}.{f}" for m, f in FORM_CASES])
def test_form_error_lands_beside_its_field(client, method, field):
    values = {**form(method=method, targets="L0H1"), **FORM_CONTEXT.get(field, {}), field: BAD_FORM_VALUE[FIELDS[field].widget]}
    response = client.post("/explore", data=values, headers=HTMX)
    assert response.status_code == 200
    slot = re.search(rf'<div class="field-error" id="err-{field}"[^>]*>([^<]+)</div>', response.text)
    assert slot is not None, f"no error beside {field}: " + " | ".join(re.findall(r"class=\"field-error\"[^>]*>[^<]+", response.text) + re.findall(r"class=\"error\"[^>]*>[^<]+", response.text))
    words = {"positions_at": "position"}.get(field, field.rstrip("s").replace("_", " "))  # the box names the positions picked
    assert words in slot.group(1) or "Input should be" in slot.group(1)
    others = re.findall(r'<div class="field-error" id="err-([a-z_]+)"[^>]*>[^<]+</div>', response.text)
    assert others == [field]  # nowhere else, not in the generic box
