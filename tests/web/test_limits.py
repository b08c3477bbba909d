"""Oversized requests are refused fast (< 2 s), with a 4xx naming the field, without holding memory:
a 10 MB prompt and 20,000 prompts, by the body limit (413, from the Content-Length alone or as a
streamed body passes it) and, on a server with a large body limit, by the prompt limits (422, before
anything is tokenized)."""

from __future__ import annotations

import gc
import json
import time

import httpx
import pytest

from web_helpers import HTMX, IOI, IOI_CORRUPTED, form, live_server

PAIR = {"clean": IOI, "corrupted": IOI_CORRUPTED, "answer": "Mary", "wrong": "John"}
BIG_PROMPT = {"prompts": [{**PAIR, "clean": "Mary " * 2_097_152}]}  # 10 MiB of prompt
MANY_PROMPTS = {"prompts": [PAIR] * 20_000}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed_post(url: str, body: bytes, **kwargs) -> tuple[httpx.Response, float, float]:
    """POST ``body`` (built before measuring); the answer, the seconds it took and the RSS growth in MB."""
    gc.collect()
    before = rss_mb()
    start = time.monotonic()
    response = httpx.post(url, content=body, timeout=30, **kwargs)
    elapsed = time.monotonic() - start
    gc.collect()
    return response, elapsed, rss_mb() - before


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_model):
    """A server with the default limits, and one whose body limit is large enough to reach the prompt limits."""
    with live_server(tmp_path_factory.mktemp("default"), tiny_model) as default, \
            live_server(tmp_path_factory.mktemp("large"), tiny_model, max_body_bytes=64 * 2**20) as large:
        yield default, large


@pytest.mark.parametrize("payload", [BIG_PROMPT, MANY_PROMPTS], ids=["10MB-prompt", "20000-prompts"])
def test_over_the_body_limit_is_413_at_once(servers, payload):
    body = json.dumps(payload).encode()
    response, elapsed, grew = timed_post(servers[0] + "/api/runs", body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["field"] == "body" and "PATCHSTUDIO_MAX_BODY_BYTES" in response.json()["detail"]
    assert elapsed < 2 and grew < 40, (elapsed, grew)


def test_a_streamed_body_is_cut_off_at_the_limit(servers):
    chunk = b" " * 65536

    def body():
        yield b'{"prompts": ['
        for _ in range(160):  # 10 MB, without a Content-Length
            yield chunk
        yield b"]}"

    start = time.monotonic()
    response = httpx.post(servers[0] + "/api/runs", content=body(), headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("payload, field, words", [
    (BIG_PROMPT, "prompts.0.clean", "characters long; the limit is 2,000"),
    (MANY_PROMPTS, "prompts", "20,000 prompt pairs; this server takes at most 256"),
], ids=["10MB-prompt", "20000-prompts"])
def test_past_the_prompt_limits_is_422_naming_the_field_before_tokenizing(servers, payload, field, words):
    body = json.dumps(payload).encode()
    response, elapsed, grew = timed_post(servers[1] + "/api/runs", body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["field"] == field and words in response.json()["detail"]
    assert elapsed < 2 and grew < 250, (elapsed, grew)


def test_the_form_has_the_same_limits(servers):
    big = form(clean="Mary " * 2_097_152)
    response = httpx.post(servers[0] + "/explore", data=big, headers=HTMX, timeout=30)
    assert response.status_code == 413 and "PATCHSTUDIO_MAX_BODY_BYTES" in response.text
    start = time.monotonic()
    response = httpx.post(servers[1] + "/explore", data=big, headers=HTMX, timeout=30)
    assert response.status_code == 200 and time.monotonic() - start < 2
    assert "clean is 10,485,760 characters long; the limit is 2,000" in response.text
    lines = "\n".join([f"{IOI} | {IOI_CORRUPTED} | Mary | John"] * 20_000)
    response = httpx.post(servers[1] + "/explore", data=form(source="family", family="custom", pairs_text=lines), headers=HTMX, timeout=30)
    assert "the prompt list has 20,000 lines; this server takes at most 256 pairs" in response.text
