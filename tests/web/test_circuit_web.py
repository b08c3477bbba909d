"""The circuit method on the web: the IOI circuit example run from the form, its page and .json twin,
faithfulness at the empty and full circuits against plain forward passes, an edge's link to its
exact run, and the export in the EAP-IG code's Graph JSON layout."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch

from patchstudio.web.forms import DEFAULT_FORM
from patchstudio.web.presets import PRESETS
from web_helpers import HTMX, make_client

TOL = 1e-4


@pytest.fixture(scope="module")
def default_model():
    from patchstudio.models.registry import load_model

    return load_model("default")  # the IOI family's names are in its vocabulary


@pytest.fixture(scope="module")
def circuit_run(tmp_path_factory, default_model):
    """(client, run id, twin, page text) of the IOI circuit example, computed once."""
    with make_client(tmp_path_factory.mktemp("circuit"), default_model) as client:
        ran = client.post("/explore", data={**DEFAULT_FORM, **PRESETS["ioi-circuit"].form}, headers=HTMX)
        assert ran.status_code == 200
        url = ran.headers["HX-Push-Url"]
        run_id = url.rsplit("/", 1)[1]
        twin = client.get(f"{url}.json").json()
        page = client.get(url)
        assert page.status_code == 200
        yield client, run_id, twin, html.unescape(page.text)


def _logit_diffs(model, prompts, side):
    """Each pair's logit difference on its clean or corrupted tokens, from a plain forward pass."""
    tok = model.tokenizer
    out = []
    for p in prompts:
        tokens = torch.tensor([tok.convert_tokens_to_ids(p[side])])
        with torch.no_grad():
            last = model(tokens)[0, -1]
        out.append(float(last[tok.convert_tokens_to_ids(p["answer"])] - last[tok.convert_tokens_to_ids(p["wrong"])]))
    return out


def test_faithfulness_is_0_and_1_at_the_empty_and_full_circuits(circuit_run, default_model):
    """Under patching the empty circuit is the corrupted run and the full one the clean run: their
    metrics equal plain forward passes, so f(empty) = 0 and f(full) = 1 against those passes."""
    _, _, twin, _ = circuit_run
    f = twin["extras"]["faithfulness"]
    assert f["intervention"] == "patching" and f["sizes"][-1] == f["n_edges"] == len(twin["labels"]["edge"])
    clean = _logit_diffs(default_model, twin["prompts"], "clean")
    corrupted = _logit_diffs(default_model, twin["prompts"], "corrupted")
    assert f["per_prompt_empty"] == pytest.approx(corrupted, abs=TOL)
    assert f["per_prompt_full"] == pytest.approx(clean, abs=TOL)
    m_clean, m_corrupted = sum(clean) / len(clean), sum(corrupted) / len(corrupted)

    def faith(m):
        return (m - m_corrupted) / (m_clean - m_corrupted)

    assert faith(f["metric_empty"]) == pytest.approx(0.0, abs=TOL)
    assert faith(f["metric_full"]) == pytest.approx(1.0, abs=TOL)
    assert f["curve"][-1] == pytest.approx(1.0, abs=TOL)
    # every point of the curve is its size's mean metric on that scale
    assert f["curve"] == pytest.approx([faith(m) for m in f["metric"]], abs=TOL)


def test_the_page_shows_its_twins_numbers(circuit_run):
    _, run_id, twin, text = circuit_run
    f = twin["extras"]["faithfulness"]
    assert f"Evidence: {twin['evidence']}." in text
    assert f'id="faith-last">{f["curve"][-1]:.3f}<' in text and f'id="faith-first">{f["curve"][0]:.3f}<' in text
    assert f'id="metric-empty">{f["metric_empty"]:.4f}<' in text
    assert f'id="cpr">{f["cpr"]["value"]:.3f}<' in text and f'id="cmd">{f["cmd"]["value"]:.3f}<' in text
    data = json.loads(re.search(r'<script type="application/json" id="circuit-data">(.*?)</script>', text, re.S).group(1))
    assert data["k"] == twin["spec"]["top_k"] == 20 and data["n_edges"] == len(twin["labels"]["edge"])
    # the drawn edges: name and estimated change from the clean run (noising), largest |change| first
    changes = {name: v - twin["clean"] for name, v in zip(twin["labels"]["edge"], twin["values"])}
    assert [e[4] for e in data["edges"]][:20] == [twin["labels"]["edge"][i] for i in twin["extras"]["ranking"][:20]]
    for e in data["edges"][:20]:
        assert e[2] == pytest.approx(changes[e[4]], abs=1e-5)
    # the verified edges' table: one row per exact edge, linking to its run
    exact = twin["extras"]["exact"]
    assert len(exact["edges"]) == 20
    for i in exact["edges"][:3]:
        name = twin["labels"]["edge"][i]
        assert f'href="/runs/{run_id}/edges?name=' in text and f">{name}</a>" in text
    assert f'href="/runs/{run_id}/eap-ig.json?n=20"' in text


def test_an_edge_link_lands_on_its_exact_run(circuit_run):
    """GET shows the cost and computes nothing; POST runs edge_patching of that edge alone, whose
    value is the circuit's exact value for it; GET then redirects to the stored run."""
    client, run_id, twin, _ = circuit_run
    exact = twin["extras"]["exact"]
    name = twin["labels"]["edge"][exact["edges"][0]]
    link = f"/runs/{run_id}/edges"
    before = len(client.get("/api/runs").json())
    shown = client.get(link, params={"name": name}, follow_redirects=False)
    assert shown.status_code == 200 and len(client.get("/api/runs").json()) == before
    posted = client.post(link, params={"name": name}, follow_redirects=False)
    assert posted.status_code == 303
    edge_url = posted.headers["location"]
    edge = client.get(f"{edge_url}.json").json()
    assert edge["spec"]["method"] == "edge_patching" and edge["spec"]["edges"] == [name]
    assert edge["spec"]["direction"] == twin["spec"]["direction"] and edge["prompts"] == twin["prompts"]
    assert edge["values"][0] == pytest.approx(exact["values"][0], abs=TOL)
    assert [row[0] for row in edge["per_prompt"]] == pytest.approx([row[0] for row in exact["per_prompt"]], abs=TOL)
    again = client.get(link, params={"name": name}, follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == edge_url
    # a name the graph lacks is a 4xx naming the field
    bad = client.get(link, params={"name": "a9.h9->logits"})
    assert bad.status_code == 422 and "name" in bad.text


def _eap_ig_edge_names(cfg) -> set[str]:
    """The edges of the EAP-IG code's Graph.from_model, by its rules: every earlier node into each
    head's q, k and v and into each MLP (in a sequential block, the same layer's heads too), and
    every node into the logits."""
    names, stream = set(), ["input"]
    for layer in range(cfg["n_layers"]):
        heads = [f"a{layer}.h{h}" for h in range(cfg["n_heads"])]
        names |= {f"{s}->{h}<{x}>" for s in stream for h in heads for x in "qkv"}
        if cfg["parallel_attn_mlp"]:
            names |= {f"{s}->m{layer}" for s in stream}
            stream = stream + heads
        else:
            stream = stream + heads
            names |= {f"{s}->m{layer}" for s in stream}
        stream.append(f"m{layer}")
    return names | {f"{s}->logits" for s in stream}


def test_the_eap_ig_export_is_the_graph_json_layout(circuit_run):
    client, run_id, twin, _ = circuit_run
    got = client.get(f"/runs/{run_id}/eap-ig.json", params={"n": 30})
    assert got.status_code == 200 and "attachment" in got.headers["content-disposition"]
    d = got.json()
    assert set(d) == {"cfg", "nodes", "edges"}
    assert d["cfg"] == {"n_layers": 4, "n_heads": 8, "parallel_attn_mlp": False, "d_model": 128}
    assert set(d["edges"]) == _eap_ig_edge_names(d["cfg"])
    assert set(d["nodes"]) == {"input", "logits"} | {f"a{l}.h{h}" for l in range(4) for h in range(8)} | {f"m{l}" for l in range(4)}
    top = {twin["labels"]["edge"][i] for i in twin["extras"]["ranking"][:30]}
    assert {n for n, e in d["edges"].items() if e["in_graph"]} == top
    changes = dict(zip(twin["labels"]["edge"], twin["values"]))
    for name, e in d["edges"].items():
        assert e["score"] == pytest.approx(changes[name] - twin["clean"], abs=1e-6)
    # a node is in the graph when an edge in it touches it (the logits always)
    touched = {"logits"} | {part.split("<")[0] for n in top for part in n.split("->")}
    assert {n for n, v in d["nodes"].items() if v["in_graph"]} == touched
    assert client.get(f"/runs/{run_id}/eap-ig.json", params={"n": -1}).status_code == 422
