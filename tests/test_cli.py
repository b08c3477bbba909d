"""The command line, ``patchstudio run spec.json``, on the tiny model (no model is loaded by name)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import patchstudio
from helpers import TINY_PAIRS
from patchstudio.cli import app
from patchstudio.models.registry import ModelUnavailableError

SPEC = {"prompts": TINY_PAIRS, "component": "head"}
ABLATION = {"method": "ablation", "ablation": "zero", "prompts": TINY_PAIRS, "component": "mlp_out"}


@pytest.fixture
def cli(monkeypatch, tiny_model):
    """Invoke the CLI with ``patchstudio.load_model`` returning the tiny model; records the names asked for."""
    asked: list[str] = []

    def fake_load(name="default", *, device="cpu", dtype="float32"):
        asked.append(name)
        return tiny_model

    monkeypatch.setattr(patchstudio, "load_model", fake_load)
    runner = CliRunner()

    def invoke(*args, input=None):
        result = runner.invoke(app, list(args), input=input)
        result.asked = asked
        return result

    return invoke


_EXPECTED: dict[str, object] = {}


def _expected(spec, model):
    """``patchstudio.run(spec, model=model)``, computed once per spec."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _EXPECTED:
        _EXPECTED[key] = patchstudio.run(spec, model=model)
    return _EXPECTED[key]


def _write(path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("spec", [SPEC, ABLATION], ids=["patching", "ablation"])
def test_run_prints_result_json(cli, tmp_path, tiny_model, spec):
    res = cli("run", _write(tmp_path / "spec.json", spec), "--quiet")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    expected = _expected(spec, tiny_model)
    assert out["values"] == expected.values
    assert out["id"] == expected.id
    assert out["spec"] == expected.spec.model_dump(mode="json")
    assert out["axes"] == expected.axes
    assert (out["clean"], out["corrupted"]) == (expected.clean, expected.corrupted)
    assert res.asked == ["default"]


def test_run_asks_for_the_spec_model(cli, tmp_path):
    res = cli("run", _write(tmp_path / "spec.json", {**SPEC, "model": "gpt2"}), "-q")
    assert res.exit_code == 0, res.output
    assert res.asked == ["gpt2"]
    assert json.loads(res.stdout)["model"]["name"] == "gpt2"


def test_run_reads_stdin(cli, tiny_model):
    res = cli("run", "-", "--quiet", input=json.dumps(SPEC))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["values"] == _expected(SPEC, tiny_model).values


def test_progress_goes_to_stderr(cli, tmp_path):
    res = cli("run", _write(tmp_path / "spec.json", SPEC))
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)  # stdout is only the JSON
    assert "activation_patching head" in res.stderr
    assert "16/16" in res.stderr


def test_out_writes_the_json(cli, tmp_path, tiny_model):
    target = tmp_path / "result.json"
    res = cli("run", _write(tmp_path / "spec.json", SPEC), "--out", str(target), "-q")
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    written = json.loads(target.read_text())
    expected = _expected(SPEC, tiny_model)
    assert written["values"] == expected.values
    assert res.stderr == f"wrote {target} (id {expected.id})\n"


@pytest.mark.parametrize(
    "content, error",
    [
        ('{"prompts": [', "error: {path} is not valid JSON: Expecting value: line 1 column 14 (char 13)"),
        ("", "error: {path} is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ({**SPEC, "colour": "red"}, "error: invalid spec: colour: Extra inputs are not permitted"),
        ({**ABLATION, "direction": "noise"}, "error: invalid spec: direction: Extra inputs are not permitted"),
        ({"prompts": []}, "error: invalid spec: prompts: the prompt set is empty: give at least one prompt pair"),
        ({"prompts": [{k: v for k, v in TINY_PAIRS[0].items() if k != "wrong"}]},
         "error: invalid spec: prompts.0.wrong: Field required"),
        ({"prompts": [{**TINY_PAIRS[0], "answer": "  "}]},
         "error: invalid spec: prompts.0.answer: answer is empty"),
        ({**SPEC, "metric": "accuracy"},
         "error: invalid spec: metric: Input should be 'logit_diff', 'normalized_logit_diff', 'prob', 'loss' or 'kl'"),
    ],
    ids=["truncated-json", "empty-file", "extra-field", "direction-on-ablation", "no-prompts", "no-wrong", "blank-answer", "bad-metric"],
)
def test_bad_spec_exits_2_with_error_line(cli, tmp_path, content, error):
    path = _write(tmp_path / "spec.json", content)
    res = cli("run", path, "-q")
    assert res.exit_code == 2
    assert res.stdout == ""
    assert res.stderr == error.format(path=path) + "\n"
    assert res.asked == []  # rejected before any model is loaded


def test_invalid_json_on_stdin(cli):
    res = cli("run", "-", input="not json")
    assert res.exit_code == 2
    assert res.stderr == "error: - is not valid JSON: Expecting value: line 1 column 1 (char 0)\n"


def test_token_length_mismatch_exits_2(cli, tmp_path):
    pair = {**TINY_PAIRS[0], "corrupted": TINY_PAIRS[0]["corrupted"] + " the"}
    res = cli("run", _write(tmp_path / "spec.json", {"prompts": [pair]}), "-q")
    assert res.exit_code == 2
    assert res.stdout == ""
    line = res.stderr.strip()
    assert "\n" not in line
    assert line.startswith(
        "error: prompt 1: clean and corrupted prompts must have the same number of tokens, but clean has 15 "
    )
    assert "corrupted has 16 " in line
    assert line.endswith("they first differ at position 10")


def test_unknown_answer_exits_2(cli, tmp_path):
    pair = {**TINY_PAIRS[0], "answer": "Zebra"}
    res = cli("run", _write(tmp_path / "spec.json", {"prompts": [pair]}), "-q")
    assert res.exit_code == 2
    assert res.stderr == "error: prompt 1: answer 'Zebra' is not in the model's vocabulary\n"


def test_over_budget_exits_2(cli, tmp_path):
    res = cli("run", _write(tmp_path / "spec.json", SPEC), "--max-patched-runs", "10", "-q")
    assert res.exit_code == 2
    assert res.stderr.startswith(
        "error: this sweep needs 16 patched runs (2 prompt(s) x 8 patches), over the budget of 10;"
    )


def test_missing_spec_file_exits_2(cli, tmp_path):
    path = tmp_path / "nope.json"
    res = cli("run", str(path))
    assert res.exit_code == 2
    assert res.stderr == f"error: cannot read {path}: No such file or directory\n"


def test_unavailable_model_exits_2(monkeypatch, tmp_path):
    def unavailable(name="default", *, device="cpu", dtype="float32"):
        raise ModelUnavailableError(f"model {name!r} could not be loaded: run `huggingface-cli download {name}`")

    monkeypatch.setattr(patchstudio, "load_model", unavailable)
    res = CliRunner().invoke(app, ["run", _write(tmp_path / "spec.json", {**SPEC, "model": "org/big"}), "-q"])
    assert res.exit_code == 2
    assert res.stderr == "error: model 'org/big' could not be loaded: run `huggingface-cli download org/big`\n"


def test_worker_refuses_models_outside_the_allow_list(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/w.sqlite3")
    result = cli("worker", "--models", "gpt2,/etc/passwd", "--model-loader", "model_loaders:tiny")
    assert result.exit_code == 2
    assert "not in this server's allow-list (PATCHSTUDIO_MODELS): gpt2, /etc/passwd" in result.output


def test_model_loader_must_name_a_function(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/w.sqlite3")
    result = cli("worker", "--model-loader", "nonsense")
    assert result.exit_code == 2 and "must look like 'module:function'" in result.output
