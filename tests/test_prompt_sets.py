"""Prompt sets: CSV and JSONL parsed row by row, every bad row named by line and reason, the id a
sha256 of the canonical rows (computed here by hand), and the model check of each row."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
import torch

from helpers import TINY_PAIRS
from patchstudio.prompt_sets import PromptSet, PromptSetError, check_on_model, format_of, parse_prompt_set

A, B = TINY_PAIRS[0], TINY_PAIRS[1]


def csv_of(*rows, header="clean,corrupted,answer,wrong"):
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([header.split(","), *rows])
    return out.getvalue()


def bad_rows(data, fmt="csv", **kw):
    with pytest.raises(PromptSetError) as caught:
        parse_prompt_set(data, fmt, **kw)
    return [(r["line"], r["reason"]) for r in caught.value.detail["rows"]]


def test_csv_and_jsonl_give_the_same_set_and_its_id_is_the_sha256_of_the_canonical_rows():
    text = csv_of(*[(p["clean"], p["corrupted"], p["answer"], p["wrong"]) for p in (A, B)])
    from_csv = parse_prompt_set(text.encode(), "csv")
    from_jsonl = parse_prompt_set("\n".join(json.dumps(p) for p in (A, B)), "jsonl")
    rows = [{"answer": p["answer"], "clean": p["clean"], "corrupted": p["corrupted"], "wrong": p["wrong"]} for p in (A, B)]
    by_hand = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]
    assert from_csv.id == from_jsonl.id == by_hand
    assert [p.model_dump() for p in from_csv.pairs] == [A, B]
    assert from_csv.lines == (2, 3) and from_jsonl.lines == (1, 2)


def test_answer_whitespace_does_not_change_the_id_but_row_order_and_roles_do():
    base = parse_prompt_set(csv_of(("a b", "a c", "x", "y"), ("d e", "d f", "x", "y")), "csv")
    spaced = parse_prompt_set(csv_of(("a b", "a c", " x ", "y\u00a0"), ("d e", "d f", "x", "y")), "csv")
    swapped = parse_prompt_set(csv_of(("d e", "d f", "x", "y"), ("a b", "a c", "x", "y")), "csv")
    roled = parse_prompt_set(csv_of(("a b", "a c", "x", "y", "b"), ("d e", "d f", "x", "y", "e"),
                                    header="clean,corrupted,answer,wrong,S2"), "csv")
    assert base.id == spaced.id
    assert len({base.id, swapped.id, roled.id}) == 3
    assert roled.roles == ({"S2": "b"}, {"S2": "e"})
    assert PromptSet.from_rows(roled.rows()).id == roled.id


def test_every_bad_row_is_named_with_its_line_and_reason():
    text = (
        "clean,corrupted,answer,wrong\n"
        "a b,a c,x,y\n"        # line 2: good
        "a b,a c,x,x\n"        # line 3: answer == wrong
        ",a c,x,y\n"           # line 4: empty clean
        "a b,a c,x\n"          # line 5: a field short
        "\n"                   # line 6: blank, skipped
        "a b,a c, x ,y\n"      # line 7: same pair as line 2 (answers are stripped)
        "e f,e g,x,y\n"        # line 8: good
    )
    rows = bad_rows(text)
    assert [line for line, _ in rows] == [3, 4, 5, 7]
    assert "wrong is the answer itself" in rows[0][1]
    assert rows[1][1] == "clean is empty"
    assert rows[2][1] == "3 fields where the header has 4"
    assert rows[3][1] == "the same pair as line 2"


def test_jsonl_rows_name_missing_fields_non_text_and_non_objects():
    text = "\n".join([
        json.dumps({"clean": "a b", "corrupted": "a c", "answer": "x"}),            # 1: no wrong
        json.dumps({"clean": "a b", "corrupted": "a c", "answer": 3, "wrong": "y"}),  # 2: answer not text
        "[1, 2]",                                                                    # 3: not an object
        "{oops",                                                                     # 4: not JSON
        json.dumps({"clean": "a\u0000b", "corrupted": "a c", "answer": "x", "wrong": "y"}),  # 5: NUL
    ])
    assert bad_rows(text, "jsonl") == [
        (1, "missing field wrong"), (2, "answer is not text"), (3, "not a JSON object"), (4, "not a JSON object"),
        (5, "clean holds a NUL character"),
    ]


def test_a_header_without_the_pair_columns_is_refused_at_line_1():
    assert bad_rows("prompt,corrupted,answer,wrong\na,b,c,d\n") == [
        (1, "the header has no clean column: it must name clean, corrupted, answer, wrong")]


def test_the_first_row_past_the_limit_is_named_and_nothing_past_it():
    rows = [(f"w{i} a", f"w{i} b", "x", "y") for i in range(4)]
    assert bad_rows(csv_of(*rows), limit=3) == [(5, "more than 3 pairs: a set holds at most 3")]
    assert len(parse_prompt_set(csv_of(*rows), "csv", limit=4).pairs) == 4


def test_an_empty_file_or_bytes_that_are_not_utf8_are_refused():
    with pytest.raises(PromptSetError, match="no prompt pairs"):
        parse_prompt_set(b"clean,corrupted,answer,wrong\n", "csv")
    with pytest.raises(PromptSetError, match="not UTF-8"):
        parse_prompt_set(b"clean,corrupted,answer,wrong\n\xff\xfe,a,b,c\n", "csv")


def test_the_format_follows_the_file_name():
    assert format_of("pairs.jsonl") == format_of("x.ndjson") == format_of(None, "application/json") == "jsonl"
    assert format_of("pairs.csv") == format_of(None) == "csv"


def test_the_model_check_names_each_row_that_does_not_tokenize(tiny_model):
    good = (A["clean"], A["corrupted"], A["answer"], A["wrong"])
    longer = (A["clean"], A["corrupted"] + " Mary", A["answer"], A["wrong"])  # one token more than clean
    unknown = (A["clean"].replace("store", "zeppelin"), A["corrupted"].replace("store", "zeppelin"), "Mary", "John")
    with pytest.raises(PromptSetError) as caught:
        check_on_model(tiny_model, parse_prompt_set(csv_of(good, longer, unknown), "csv"))
    rows = caught.value.detail["rows"]
    assert [r["line"] for r in rows] == [3, 4]
    assert "same number of tokens" in rows[0]["reason"] and "'zeppelin'" in rows[1]["reason"]
    preview = check_on_model(tiny_model, parse_prompt_set(csv_of(good), "csv"))
    assert preview[0]["answer"] == ["Mary"] and preview[0]["clean"][-1] == "to"
    assert len(preview[0]["clean"]) == len(A["clean"].split()) + 1  # the words and the BOS


def _distinct_rows(n):
    """n distinct IOI rows in the tiny tokenizer's words."""
    import itertools

    names = "Mary John Alice Bob Tom Anna".split()
    out = []
    for (a, b), place, obj, start, fill in itertools.product(itertools.permutations(names, 2), ["store", "garden", "school"],
                                                             ["drink", "book", "ring"], ["When", "Then"], ["", " and had a lot of fun"]):
        clean = f"{start} {a} and {b} went to the {place}{fill} , {b} gave a {obj} to"
        out.append([clean, clean.replace(f", {b} gave", f", {a} gave"), a, b])
    return out[:n]


def test_batched_check_names_the_rows_and_reasons_one_row_at_a_time_does(tiny_model):
    """Rows are tokenized CHECK_BATCH at a time; each row's error (line, reason, field) and each good
    row's tokens are those of ``prepare_pairs`` on that row alone, without the batch (the reference),
    bad rows on both sides of a batch boundary included."""
    from patchstudio.engine.inputs import prepare_pairs
    from patchstudio.errors import InputError
    from patchstudio.prompt_sets import CHECK_BATCH

    rows = _distinct_rows(CHECK_BATCH + 40)
    for k in (3, CHECK_BATCH - 1, CHECK_BATCH, CHECK_BATCH + 7):
        clean, corrupted, a, b = rows[k]
        rows[k] = {3: [clean, corrupted + " Mary", a, b], CHECK_BATCH - 1: [clean.replace("store", "zeppelin"), corrupted, a, b],
                   CHECK_BATCH: [clean, corrupted, "zeppelin", b], CHECK_BATCH + 7: [clean, corrupted, "Mary quux", b]}[k]
    prompt_set = parse_prompt_set(csv_of(*rows), "csv")
    expected_errors, expected_rows = [], []
    for line, pair in zip(prompt_set.lines, prompt_set.pairs):
        try:
            (one,) = prepare_pairs(tiny_model, [pair], same_length=False)
        except InputError as exc:  # what each row raises alone
            expected_errors.append({"line": line, "reason": str(exc).removeprefix("prompt 1: "), "field": exc.field})
            continue
        expected_rows.append((one.clean_str, one.corrupted_str))
    assert [e["line"] for e in expected_errors] == [5, CHECK_BATCH + 1, CHECK_BATCH + 2, CHECK_BATCH + 9]
    with pytest.raises(PromptSetError) as caught:
        check_on_model(tiny_model, prompt_set)
    got = [{k: r[k] for k in ("line", "reason", "field")} for r in caught.value.detail["rows"]]
    assert got == expected_errors
    good = parse_prompt_set(csv_of(*[r for i, r in enumerate(rows) if i not in (3, CHECK_BATCH - 1, CHECK_BATCH, CHECK_BATCH + 7)]), "csv")
    preview = check_on_model(tiny_model, good)
    assert [(p["clean"], p["corrupted"]) for p in preview] == expected_rows


@pytest.mark.parametrize("family", ["tiny", "gpt2", "llama", "qwen2"])
def test_batched_tokens_are_each_texts_own(tiny_model, family_models, family, monkeypatch):
    """``tokenize_many`` (two padded batch calls) gives each text exactly the tokens ``tokenize``
    gives it alone, for texts of different lengths, one empty, one that is the pad or BOS token's
    own text, on a word-level tokenizer, byte-level BPE (pad = BOS = EOS), SentencePiece-style and
    one without a BOS."""
    from patchstudio.engine.inputs import tokenize, tokenize_many

    model = tiny_model if family == "tiny" else family_models(family)
    tok = model.tokenizer
    texts = ["When Mary and John went to the store , John gave a drink to", "Mary", "", " Mary John",
             "When Mary and John went to the store , John gave a drink to Mary"]
    texts += [t for t in (tok.pad_token, tok.bos_token, f"Mary {tok.pad_token}") if t]
    import patchstudio.engine.inputs as inputs

    calls = []
    monkeypatch.setattr(inputs, "tokenize", lambda m, t: calls.append(t) or tokenize(m, t))
    batched = tokenize_many(model, texts)
    # from the batch, not one at a time: only rows of padding alone, then the first text's check
    assert calls[-1] == texts[0] and set(calls[:-1]) <= {"", tok.pad_token, tok.bos_token}, calls
    alone = [tokenize(model, t) for t in texts]
    assert len(batched) == len(alone)
    for text, a, b in zip(texts, batched, alone):
        assert torch.equal(a, b), (family, text, a, b)


def test_bad_role_values_are_named_bad_rows_and_nothing_is_stored():
    """A role column's value names a word of the clean prompt ('a#2' for its second time)."""
    text = csv_of(("the store had a ring to", "the school had a ring to", "to", "at", "ring", "store"),  # line 2: good
                  ("the store had a ring to a", "the school had a ring to a", "to", "at", "pen", "a"),  # 3: no pen; a twice
                  ("the store had a ring to a", "the school had a ring to a", "to", "at", "a#3", "a#2"),  # 4: a#3
                  ("the store had a ring to", "the school had a ring to", "to", "at", "ring", "ring"),  # 5: one word, two roles
                  header="clean,corrupted,answer,wrong,OBJ,PLACE")
    with pytest.raises(PromptSetError) as caught:
        parse_prompt_set(text, "csv")
    rows = [(r["line"], r["field"], r["reason"]) for r in caught.value.detail["rows"]]
    assert rows == [
        (3, "OBJ", "role OBJ: 'pen' is not a word of the clean prompt"),
        (3, "PLACE", "role PLACE: 'a' is 2 times in the clean prompt: say which, e.g. a#2"),
        (4, "OBJ", "role OBJ: 'a' is 2 time(s) in the clean prompt, not 3"),
        (5, "PLACE", "roles OBJ and PLACE name the same word: a word has one role"),
    ]
    good = parse_prompt_set(csv_of(("the store had a ring to a", "the school had a ring to a", "to", "at", "a#2"),
                                   header="clean,corrupted,answer,wrong,OBJ"), "csv")
    assert good.roles == ({"OBJ": "a#2"},)


def test_role_columns_cannot_take_the_names_of_tokens():
    text = csv_of(("the store had a ring to", "the school had a ring to", "to", "at", "ring", "store"),
                  header="clean,corrupted,answer,wrong,END,diff1")
    with pytest.raises(PromptSetError) as caught:
        parse_prompt_set(text, "csv")
    assert [(r["line"], r["field"]) for r in caught.value.detail["rows"]] == [(2, "END"), (2, "diff1")]


def test_a_sets_json_rows_upload_again_with_their_roles():
    roled = parse_prompt_set(csv_of(("the store had a ring to", "the school had a ring to", "to", "at", "ring"),
                                    header="clean,corrupted,answer,wrong,OBJ"), "csv")
    again = parse_prompt_set("\n".join(json.dumps(r) for r in roled.rows()), "jsonl")
    assert again.roles == ({"OBJ": "ring"},) and again.id == roled.id


def test_the_sets_roles_go_with_its_pairs_into_the_spec():
    from patchstudio.prompt_sets import fill_prompts
    from patchstudio.specs import parse_spec

    roled = parse_prompt_set(csv_of(("the store had a ring to", "the school had a ring to", "to", "at", "ring"),
                                    header="clean,corrupted,answer,wrong,OBJ"), "csv")
    plain = {k: roled.rows()[0][k] for k in ("clean", "corrupted", "answer", "wrong")}
    for data in ({"prompt_set": roled.id}, {"prompt_set": roled.id, "prompts": [plain]}):
        assert parse_spec(fill_prompts(data, lambda _: roled)).prompts[0].roles == {"OBJ": "ring"}
    with pytest.raises(Exception, match="not those of prompt set"):
        fill_prompts({"prompt_set": roled.id, "prompts": [{**plain, "roles": {"OBJ": "store"}}]}, lambda _: roled)
