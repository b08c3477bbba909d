"""The family picker, ``/api/families`` and the form's family pairs offer on each model only the
families its tokenizer can make, and say why not the others (engine/families.py)."""

from __future__ import annotations

import html
import re

import pytest
from fastapi.testclient import TestClient

import patchstudio
from patchstudio.settings import Settings
from patchstudio.web.app import create_app
from web_helpers import HTMX, form

pytestmark = pytest.mark.usefixtures("one_thread")

GREATER_THAN_REFUSAL = (
    "greater_than needs '17' as a token of its own before a two-digit year: this tokenizer has 0 of the 1 (at least 1 "
    "needed); two-digit years that are single tokens after '17': this tokenizer has 0 of the 100 (at least 10 needed)")


@pytest.fixture
def client(tmp_path, word_models):
    """The default model (word level), a byte-level BPE (gpt2) and Qwen2's digit-by-digit tokenizer."""
    def loader(name):
        return patchstudio.load_model("default") if name == "default" else word_models(name)

    settings = Settings(models=["default", "gpt2", "qwen2"], database_url=f"sqlite:///{tmp_path}/runs.sqlite3",
                        allowed_hosts=["testserver"])
    with TestClient(create_app(settings, model_loader=loader)) as c:
        yield c


def offered_in(page: str) -> list[str]:
    select = re.search(r'<select name="family">(.*?)</select>', page, re.S).group(1)
    return re.findall(r'<option value="(\w+)"', select)


def test_the_picker_offers_what_the_tokenizer_supports_and_says_why_not(client):
    page = client.get("/").text  # the default model
    assert offered_in(page) == ["ioi_swap", "ioi_abc", "induction", "custom"]
    refused = html.unescape(re.search(r'<span id="families-refused">(.*?)</span></details>', page, re.S).group(1))
    assert GREATER_THAN_REFUSAL + "." in refused and "agreement needs nouns whose singular and plural" in refused
    response = client.post("/explore", data=form(model="gpt2", source="family", family="greater_than"))
    assert response.status_code == 200, response.text
    assert offered_in(response.text) == ["ioi_swap", "ioi_abc", "induction", "greater_than", "agreement", "custom"]
    assert 'id="families-refused"' not in response.text
    pairs = re.search(r'<textarea name="pairs_text"[^>]*>(.*?)</textarea>', response.text, re.S).group(1).splitlines()
    assert len(pairs) == 2
    for line in pairs:  # clean | corrupted | answer | wrong, made from the gpt2 tokenizer's years
        clean, corrupted, answer, wrong = [x.strip() for x in line.split("|")]
        year = int(re.search(r"year (17\d\d) to the year$", clean).group(1))
        assert corrupted == "The war lasted from the year 1701 to the year"
        assert (int(answer), int(wrong)) == (year + 1, year - 1)


def test_a_family_the_model_cannot_make_is_refused_beside_the_family_field(client):
    response = client.post("/explore", data=form(model="qwen2", source="family", family="greater_than"))
    text = html.unescape(response.text)
    assert GREATER_THAN_REFUSAL + ", so it is not offered on this model" in text
    assert re.search(r'id="err-family"[^>]*>greater_than needs', text), "the message sits beside the family field"
    assert offered_in(response.text) == ["ioi_swap", "ioi_abc", "induction", "agreement", "custom"]


def test_api_families(client):
    body = client.get("/api/families", params={"model": "qwen2"}).json()
    rows = {row["name"]: row for row in body["families"]}
    assert list(rows) == ["ioi_swap", "ioi_abc", "induction", "greater_than", "agreement"]
    assert rows["greater_than"]["offered"] is False and rows["greater_than"]["refusal"] == GREATER_THAN_REFUSAL
    assert rows["greater_than"]["words"] == {"century": {"kept": 0, "candidates": 1}, "years": {"kept": 0, "candidates": 100}}
    # tests/word_models.py trains on 10 of the 60 names and 5 of the 20 noun pairs
    assert rows["ioi_swap"]["words"]["names"] == {"kept": 10, "candidates": 60}
    assert rows["agreement"]["offered"] is True and rows["agreement"]["words"]["nouns"] == {"kept": 5, "candidates": 20}
    assert "Hanna et al. 2023" in rows["greater_than"]["note"] and "Linzen et al. 2016" in rows["agreement"]["note"]
    plain = client.get("/api/families").json()
    assert plain["model"] is None and "offered" not in plain["families"][0]
    missing = client.get("/api/families", params={"model": "nope"})
    assert missing.status_code == 404 and "no loaded model 'nope'" in missing.json()["detail"]


def test_switching_the_model_updates_the_picker_in_place(client):
    """An htmx edit re-renders the family picker (out of band) for the model now chosen."""
    response = client.post("/explore", data=form(model="qwen2", source="family", family="ioi_swap"), headers=HTMX)
    assert response.status_code == 200, response.text
    assert '<label id="family-field" hx-swap-oob="true">' in response.text
    assert offered_in(response.text) == ["ioi_swap", "ioi_abc", "induction", "agreement", "custom"]
    assert GREATER_THAN_REFUSAL in html.unescape(response.text)
