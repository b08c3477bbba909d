"""Attention patterns of a run: computed on POST, stored, then served by GET (and .json)."""

from __future__ import annotations

import json
import re

import torch

from helpers import TINY_PAIRS


def _run(client) -> str:
    return client.post("/api/runs", json={"prompts": TINY_PAIRS, "component": "head"}).json()["id"]


def test_patterns_are_computed_on_post_and_served_as_stored(client, tiny_model):
    run_id = _run(client)
    page = client.get(f"/runs/{run_id}/attention?layer=1&head=2")
    assert page.status_code == 200 and 'id="compute-attention"' in page.text  # a GET never computes
    assert client.get(f"/runs/{run_id}/attention.json?layer=1").status_code == 404
    done = client.post(f"/runs/{run_id}/attention?layer=1&head=2", follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/runs/{run_id}/attention?layer=1&head=2"
    data = client.get(f"/runs/{run_id}/attention.json?layer=1").json()
    tokens = tiny_model.to_tokens(TINY_PAIRS[1]["corrupted"])
    _, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_pattern"])
    expected = cache["blocks.1.attn.hook_pattern"][0]  # [head, dest, src]
    assert torch.allclose(torch.tensor(data["corrupted"][1]), expected, atol=1e-6)
    assert data["tokens"]["clean"][0][10] == "John" and len(data["clean"]) == 2
    row = torch.tensor(data["clean"][0][2][-1])  # END's row of head 2 sums to one
    assert abs(float(row.sum()) - 1.0) < 1e-5
    shown = client.get(f"/runs/{run_id}/attention?layer=1&head=2")
    assert 'id="attention-clean"' in shown.text and 'id="attention-layer"' in shown.text
    assert "The outlined row is END" in shown.text


def test_attention_refuses_heads_that_do_not_exist(client):
    run_id = _run(client)
    response = client.get(f"/runs/{run_id}/attention.json?layer=5")
    assert response.status_code == 422 and response.json()["field"] == "layer"
    page = client.get(f"/runs/{run_id}/attention?layer=5&head=0")
    assert page.status_code == 422 and "layer 5 does not exist: the model has 2 layers (0 to 1)" in page.text
    response = client.post(f"/runs/{run_id}/attention?layer=0&head=-1")
    assert response.status_code == 422 and "head -1 does not exist" in response.text
    assert client.get("/runs/0123456789abcdef/attention?layer=0").status_code == 404


def test_figure1_links_to_the_heads_attention(client):
    run_id = _run(client)
    text = client.get(f"/runs/{run_id}/figure1?layer=1&head=3").text
    assert f'href="/runs/{run_id}/attention?layer=1&amp;head=3" id="attention-link"' in text


def _figure(text: str, name: str) -> dict:
    found = re.search(rf'<script type="application/json" id="{name}-data">(.*?)</script>', text, re.S)
    assert found, name
    return json.loads(found.group(1))


def test_each_pattern_is_its_own_prompts_on_the_json_and_on_the_page(client, tiny_model):
    """Plain hooks on each prompt: the "clean" pattern is the clean prompt's, never the corrupted one's."""
    run_id = _run(client)
    client.post(f"/runs/{run_id}/attention?layer=1&head=2")
    data = client.get(f"/runs/{run_id}/attention.json?layer=1").json()
    name = "blocks.1.attn.hook_pattern"
    expected = {}
    for which in ("clean", "corrupted"):
        for i, pair in enumerate(TINY_PAIRS):
            _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(pair[which]), names_filter=[name])
            expected[which, i] = cache[name][0]  # [head, dest, src]
            assert torch.allclose(torch.tensor(data[which][i]), expected[which, i], atol=1e-6), (which, i)
    assert not torch.allclose(expected["clean", 0][2], expected["corrupted", 0][2], atol=1e-3)  # the two can be told apart
    for prompt in (0, 1):
        text = client.get(f"/runs/{run_id}/attention?layer=1&head=2&_prompt={prompt}").text
        for which in ("clean", "corrupted"):
            z = torch.tensor(_figure(text, f"attention-{which}")["data"][0]["z"])
            assert torch.allclose(z, expected[which, prompt][2], atol=1e-6), (which, prompt)
        layer = _figure(text, "attention-layer")  # the layer's small multiples: the clean prompt's heads
        zs = [torch.tensor(trace["z"]) for trace in layer["data"] if "z" in trace]
        assert len(zs) >= tiny_model.cfg.n_heads
        for head, z in enumerate(zs[: tiny_model.cfg.n_heads]):
            assert torch.allclose(z, expected["clean", prompt][head], atol=1e-6), (head, prompt)
