"""Real architectures through the web app: the model picker, answers of several tokens through the
API and the page, and Figure 1 where a method is refused for the model (self-repair on Gemma 2)."""

from __future__ import annotations

import re

import pytest
import torch

from fastapi.testclient import TestClient

from family_models import MULTI_TOKEN_PAIRS, PAIRS
from patchstudio.engine.run import run
from patchstudio.settings import Settings
from patchstudio.web.app import create_app
from web_helpers import HTMX, form

pytestmark = pytest.mark.usefixtures("one_thread")

MULTI = {"prompts": MULTI_TOKEN_PAIRS[:1], "component": "head", "model": "llama"}


@pytest.fixture
def client(tmp_path, family_models):
    """An app offering the tiny Llama and Gemma 2 (loaded from their directories) and a model that
    cannot be loaded."""
    from patchstudio.models.registry import ModelUnavailableError

    def loader(name):
        if name == "missing-org/missing":
            raise ModelUnavailableError("model 'missing-org/missing' could not be loaded: run `hf download missing-org/missing`")
        return family_models(name)

    settings = Settings(models=["llama", "gemma2", "missing-org/missing"], database_url=f"sqlite:///{tmp_path}/runs.sqlite3",
                        allowed_hosts=["testserver"])
    with TestClient(create_app(settings, model_loader=loader)) as c:
        yield c


def test_model_picker_shows_architecture_size_and_whether_it_loaded(client, family_models):
    page = client.get("/").text
    select = re.search(r'<select name="model">(.*?)</select>', page, re.S).group(1)
    n = sum(p.numel() for p in family_models("llama").parameters())
    assert f'<option value="llama" >llama (LlamaForCausalLM, {n / 1e3:.1f}k params)</option>' in select
    assert '<option value="gemma2" >gemma2 (Gemma2ForCausalLM, ' in select
    assert '<option value="missing-org/missing" >missing-org/missing (not loaded)</option>' in select
    response = client.post("/api/runs", json={"prompts": PAIRS, "model": "missing-org/missing"})
    assert response.status_code == 422 and "`hf download missing-org/missing`" in response.json()["detail"]


def test_multi_token_answers_through_the_api(client, family_models):
    response = client.post("/api/runs", json=MULTI)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = run(family_models("llama"), MULTI)  # equal to teacher forcing: tests/engine/test_families.py
    assert torch.allclose(torch.tensor(body["values"]), torch.tensor(expected.values), atol=1e-6)
    assert body["clean"] == pytest.approx(expected.clean, abs=1e-6)
    assert body["prompts"][0]["answer"] == "Mary Ann"
    assert body["model"] | {"name": None} == {
        "name": None, "architecture": "LlamaForCausalLM", "device": "cpu", "dtype": "float32",
        "n_layers": 2, "n_heads": 4, "d_model": 64, "n_ctx": 64, "d_vocab": len(family_models("llama").tokenizer)}
    assert body["warnings"] == []
    refused = client.post("/api/runs", json={**MULTI, "method": "path_patching"})
    assert refused.status_code == 422
    assert refused.json()["field"] == "answer" and "path patching needs a single-token answer" in refused.json()["detail"]


def test_multi_token_answers_through_the_page(client, family_models):
    pair = MULTI_TOKEN_PAIRS[0]
    data = form(model="llama", clean=pair["clean"], corruption="custom", corrupted=pair["corrupted"], auto_answers="",
                answer=pair["answer"], wrong=pair["wrong"])
    response = client.post("/explore", data=data, headers=HTMX)
    assert response.status_code == 200, response.text
    expected = run(family_models("llama"), {**MULTI, "prompts": [pair]})
    assert response.headers["HX-Push-Url"] == f"/runs/{expected.id}"
    assert f'id="clean-value">{expected.clean:.4f}<' in response.text
    # Figure 1 for a head: exact patching and ablation; the single-token estimates are left out
    fig = client.post(f"/runs/{expected.id}/figure1?layer=1&head=2", headers=HTMX).text
    assert f'id="patched-value">{expected.values[1][2]:.4f}<' in fig
    assert "activation patching (restoration, sufficiency-style)" in fig and "attribution estimate" not in fig
    # the metric is named as it was measured: a difference of sequence log-probabilities, not of logits
    assert "log P(answer) − log P(wrong), summed over their tokens" in response.text
    # (the family picker's option notes describe each family's own metric: not this run's claim)
    shown = re.sub(r"<option[^>]*>", "", response.text)
    assert "logit(answer)" not in shown and "logit(answer)" not in fig


def test_figure1_on_gemma2_leaves_out_the_refused_self_repair(client, family_models):
    spec = {"prompts": PAIRS, "component": "head", "model": "gemma2"}
    body = client.post("/api/runs", json=spec).json()
    fig = client.post(f"/runs/{body['id']}/figure1?layer=0&head=1", headers=HTMX).text
    assert "Cannot show Figure 1" not in fig
    assert "path patching to the logits" in fig and "direct effect (DE)" not in fig
