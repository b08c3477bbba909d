"""One request, one path: a spec is parsed once, tokenized once and priced once per submit, and a
page render asks the method registry once (issue 19).

Each counted function is wrapped wherever a patchstudio module holds it (``from x import f`` makes a
second name for it), so a call counts whichever name it goes through. "Tokenized once" is measured
against one direct ``engine.run.plan`` of the same spec: the request may tokenize what one plan does,
and no more.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections import Counter

import pytest

from helpers import TINY_PAIRS
from patchstudio.engine import inputs, methods
from patchstudio.engine import run as engine_run
from patchstudio.specs import SpecBase, parse_spec
from web_helpers import HTMX, form, make_client

SWEEP = {"prompts": TINY_PAIRS, "component": "head"}  # layer x head, 2 pairs: 16 patched runs


@pytest.fixture
def counts(monkeypatch) -> Counter:
    """Calls of parse_spec (those given data, not an already-parsed spec), prepare_pairs, tokenize,
    plan and get_method, from now on."""
    import patchstudio

    for found in pkgutil.walk_packages(patchstudio.__path__, "patchstudio."):  # every name a function may go by
        importlib.import_module(found.name)
    counter: Counter = Counter()

    def wrap(original, key: str, counted=lambda *a, **k: True):
        def wrapper(*args, **kwargs):
            if counted(*args, **kwargs):
                counter[key] += 1
            return original(*args, **kwargs)

        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("patchstudio"):
                for name, value in list(vars(module).items()):
                    if value is original:
                        monkeypatch.setattr(module, name, wrapper)

    wrap(parse_spec, "parse", lambda data, *a, **k: not isinstance(data, SpecBase))
    wrap(inputs.prepare_pairs, "prepare_pairs")
    wrap(inputs.tokenize, "tokenize")
    wrap(engine_run.plan, "plan")
    wrap(methods.get_method, "get_method")
    return counter


def tokens_of_one_plan(counts: Counter, model, spec) -> int:
    engine_run.plan(model, spec)
    n = counts["tokenize"]
    counts.clear()
    return n


def test_post_api_runs_parses_tokenizes_and_prices_a_sweep_once(tmp_path, tiny_model, counts):
    with make_client(tmp_path, tiny_model) as client:
        one_plan = tokens_of_one_plan(counts, tiny_model, SWEEP)
        assert one_plan >= 4  # at least each pair's clean and corrupted prompt
        response = client.post("/api/runs", json=SWEEP)
        assert response.status_code == 200
        assert (counts["parse"], counts["prepare_pairs"], counts["plan"], counts["tokenize"]) == (1, 1, 1, one_plan)


def test_a_queued_sweep_is_priced_once(tmp_path, tiny_model, counts):
    with make_client(tmp_path, tiny_model, background_patched_runs=0, local_workers=0) as client:
        one_plan = tokens_of_one_plan(counts, tiny_model, SWEEP)
        response = client.post("/api/runs", json=SWEEP)
        assert response.status_code == 202
        assert (counts["parse"], counts["prepare_pairs"], counts["plan"], counts["tokenize"]) == (1, 1, 1, one_plan)


def test_the_form_prices_and_tokenizes_its_spec_once(tmp_path, tiny_model, counts):
    with make_client(tmp_path, tiny_model) as client:
        response = client.post("/explore", data=form(), headers=HTMX)
        assert response.status_code == 200 and "HX-Push-Url" in response.headers
        assert (counts["prepare_pairs"], counts["plan"]) == (1, 1)


def test_a_run_page_asks_the_method_registry_once(tmp_path, tiny_model, counts):
    with make_client(tmp_path, tiny_model) as client:
        run_id = client.post("/api/runs", json=SWEEP).json()["id"]
        for headers in ({}, HTMX):
            counts.clear()
            page = client.get(f"/runs/{run_id}", headers=headers)
            assert page.status_code == 200 and 'id="heatmap"' in page.text
            # a GET reads: nothing is parsed from request data, tokenized or priced
            assert dict(counts) == {"get_method": 1}, headers


def test_each_companion_run_is_priced_once(tmp_path, tiny_model, counts):
    with make_client(tmp_path, tiny_model) as client:
        run_id = client.post("/api/runs", json=SWEEP).json()["id"]
        counts.clear()
        response = client.post(f"/runs/{run_id}/figure1?layer=1&head=2")
        assert response.status_code == 200 and 'id="triangulation"' in response.text
        stored = client.get("/api/runs?limit=50").json()
        computed = [r for r in stored if r["id"] != run_id]  # the companions, computed in this request
        assert len(computed) >= 2  # patching is this run; ablation, attribution, path, direct, repair are new
        assert counts["plan"] == counts["prepare_pairs"] == len(computed)
