"""A prompt set uploaded on the explore page in a real browser: a file with a bad row lists it and
stores nothing; the fixed file fills in the pairs and runs the experiment, whose spec names the set."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -e '.[test]')")
from playwright.sync_api import expect  # noqa: E402

from helpers import TINY_PAIRS  # noqa: E402

RUN_URL = re.compile(r"/runs/([0-9a-f]{16})$")
HEADER = "clean,corrupted,answer,wrong\n"


def csv_line(p) -> str:
    return ",".join(f'"{p[k]}"' for k in ("clean", "corrupted", "answer", "wrong")) + "\n"


def test_upload_a_bad_row_then_the_fixed_file_and_the_set_runs(page, base_url):
    page.goto("/")
    page.locator("input[name=source][value=family]").check()
    upload = page.locator("input[name=prompt_set_file]")
    bad = dict(TINY_PAIRS[1], wrong=TINY_PAIRS[1]["answer"])
    upload.set_input_files({"name": "pairs.csv", "mimeType": "text/csv",
                            "buffer": (HEADER + csv_line(TINY_PAIRS[0]) + csv_line(bad)).encode()})
    box = page.locator("#prompt-set-upload")
    expect(box).to_contain_text("1 bad row, nothing stored")
    expect(box).to_contain_text("line 3 (wrong): wrong is the answer itself")
    start = page.url

    upload.set_input_files({"name": "pairs.csv", "mimeType": "text/csv",
                            "buffer": (HEADER + "".join(csv_line(p) for p in TINY_PAIRS)).encode()})
    expect(box).to_contain_text(f"{len(TINY_PAIRS)} pairs")
    expect(page.locator("select[name=family]")).to_have_value("custom")
    expect(page.locator("#pairs_text")).to_have_value(re.compile(re.escape(TINY_PAIRS[0]["clean"])))
    page.wait_for_url(lambda url: bool(RUN_URL.search(url)) and url != start)
    spec = page.request.get(page.url + ".json").json()["spec"]
    assert spec["prompt_set"] == box.locator("a").inner_text()
    assert [{k: p[k] for k in ("clean", "corrupted", "answer", "wrong")} for p in spec["prompts"]] == TINY_PAIRS
