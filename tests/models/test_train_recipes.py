"""The training machinery of the built-in models that needs no training run: the aligned mean
ablation, one-head dropout, the recipe table and the train-default command line."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from patchstudio.cli import app
from patchstudio.models.default_model import BUILTIN_MODELS
from patchstudio.models.training.heads import aligned_mean, head_dropout_hooks
from patchstudio.models.training.recipes import RECIPES


def test_aligned_mean_counts_back_from_each_rows_last_token():
    act = torch.arange(8, dtype=torch.float).reshape(2, 4, 1)  # rows [0 1 2 3], [4 5 6 7]
    got = aligned_mean(act, torch.tensor([3, 1]))[..., 0]
    # row 0 ends at 3, row 1 at 1: positions 3|1 and 2|0 pair up; row 1's tail is left alone.
    assert got.tolist() == [[0.0, 1.0, 3.0, 4.0], [3.0, 4.0, 6.0, 7.0]]


def test_aligned_mean_of_equal_rows_is_the_plain_mean():
    act = torch.randn(5, 6, 3, 2, generator=torch.Generator().manual_seed(0))
    plain = act.mean(0, keepdim=True).expand_as(act)
    assert torch.allclose(aligned_mean(act, torch.full((5,), 5)), plain)
    assert torch.equal(aligned_mean(act, None), plain)


class _Hook:
    def __init__(self, name):
        self.name = name


class _Model:
    training = True

    class cfg:
        n_layers, n_heads = 4, 8


@pytest.mark.parametrize("heads", [None, (1, 2, 7)])
def test_drop_one_ablates_exactly_one_head_per_chosen_example(heads):
    recipe = replace(RECIPES["hydra"], drop_one=True, head_dropout=0.5, head_dropout_layers=(2,),
                     head_dropout_heads=heads, head_dropout_mode="zero")  # fmt: skip
    ((name, drop),) = head_dropout_hooks(_Model, recipe, torch.Generator().manual_seed(0), {})
    assert name == "blocks.2.attn.hook_z"
    out = drop(torch.ones(400, 3, 8, 4), _Hook(name))
    lost = (out == 0).all(-1).all(1)  # [example, head]
    assert set(lost.sum(1).tolist()) == {0, 1}
    assert 0.4 < lost.any(1).float().mean() < 0.6
    if heads is not None:
        assert lost[:, [h for h in range(8) if h not in heads]].sum() == 0


def test_every_recipe_is_a_builtin_model():
    assert set(RECIPES) == set(BUILTIN_MODELS)
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.directory == BUILTIN_MODELS[name]
        assert recipe.init_from is None or list(RECIPES).index(recipe.init_from) < list(RECIPES).index(name)


def test_train_default_refuses_an_unknown_model():
    result = CliRunner().invoke(app, ["train-default", "--model", "nope"])
    assert result.exit_code == 2 and "unknown built-in model 'nope'" in result.output


def test_train_default_card_only_rewrites_each_card_from_its_metrics(tmp_path):
    import shutil

    for name, directory in BUILTIN_MODELS.items():
        (tmp_path / name).mkdir()
        shutil.copy(directory / "metrics.json", tmp_path / name / "metrics.json")
    result = CliRunner().invoke(app, ["train-default", "--model", "all", "--card-only", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, directory in BUILTIN_MODELS.items():
        assert (tmp_path / name / "CARD.md").read_text() == (directory / "CARD.md").read_text(), name
    both = CliRunner().invoke(app, ["train-default", "--card-only", "--eval-only", "--out", str(tmp_path)])
    assert both.exit_code == 2 and "choose one" in both.output


def test_a_short_hydra_training_is_reproducible_bit_for_bit(tmp_path):
    """Seeded data, seeded dropout masks, frozen parts, the teacher run: two runs, one file."""
    from patchstudio.models.default_model import weights_fingerprint
    from patchstudio.models.training import train

    recipe = replace(RECIPES["hydra"], threads=1, self_repair_report=False)
    prints = []
    for run in ("a", "b"):
        train(tmp_path / run, steps=3, log=lambda s: None, recipe=recipe)
        prints.append(weights_fingerprint(tmp_path / run))
    assert prints[0] == prints[1]
    assert prints[0] != weights_fingerprint(BUILTIN_MODELS["default"])  # it did train


def test_trainable_heads_change_only_their_own_slices(tmp_path):
    """The hydra recipe trains one head (L3H4): after a few steps every other weight, including the
    rest of layer 3's attention (which weight decay would move) and o's shared bias, is exactly the
    default model's, and each of the head's own q/k/v/o slices has moved."""
    from safetensors.torch import load_file

    from patchstudio.models.default_model import WEIGHTS_FILE
    from patchstudio.models.training import train

    recipe = replace(RECIPES["hydra"], threads=1, self_repair_report=False)
    assert recipe.trainable_heads == ((3, 4),)
    train(tmp_path, steps=3, log=lambda s: None, recipe=recipe)
    before = load_file(str(BUILTIN_MODELS["default"] / WEIGHTS_FILE))
    after = load_file(str(tmp_path / WEIGHTS_FILE))
    assert set(before) == set(after)
    mine = slice(4 * 16, 5 * 16)
    moved = []
    for name, old in before.items():
        new = after[name]
        if name.startswith("blocks.3.attn.") and not name.endswith("o.bias"):
            own = (slice(None), mine) if name.endswith("o.weight") else (mine,)
            keep = torch.ones_like(old, dtype=torch.bool)
            keep[own] = False
            assert torch.equal(new[keep], old[keep]), name
            if not name.endswith("k.bias"):  # a key bias adds the same score to every key: no gradient
                assert not torch.equal(new[own], old[own]), name
                moved.append(name)
        else:
            assert torch.equal(new, old), name
    assert len(moved) == 6  # q, k, v weights, q and v biases, o's weight


def test_every_shipped_model_records_the_environment_a_bit_for_bit_retrain_needs():
    """Bit-for-bit reproduction holds only in the same package versions and CPU instruction set (a
    default model trained in an earlier environment did not reproduce in this one): each shipped
    model's metrics.json records them and its card names them."""
    import json

    from patchstudio.models.training.environment import NUMERIC_PACKAGES, environment_summary

    for name, directory in BUILTIN_MODELS.items():
        env = json.loads((directory / "metrics.json").read_text())["training"]["environment"]
        assert set(env["packages"]) == set(NUMERIC_PACKAGES) and env["cpu_capability"], name
        assert environment_summary(env) in (directory / "CARD.md").read_text(), name


def test_the_retrain_says_whether_it_reproduced_the_shipped_weights_and_if_not_why():
    from patchstudio.models.default_model import weights_fingerprint
    from patchstudio.models.training.environment import environment, reproduction_report

    env = environment()
    shipped = weights_fingerprint(BUILTIN_MODELS["default"])
    same = {"model": {"fingerprint": shipped}, "training": {"environment": env}}
    assert "the shipped weights bit for bit" in reproduction_report("default", same, shipped, env)

    other = {"model": {"fingerprint": "0" * 64}, "training": {"environment": env}}
    older = {**env, "packages": {**env["packages"], "torch": "2.0.0"}}
    line = reproduction_report("default", other, shipped, older)
    assert "differs from the shipped" in line and "torch 2.0.0" in line and env["packages"]["torch"] in line
    assert "please report it" in reproduction_report("default", other, shipped, env)  # nothing explains it
    assert "other than the recipe's" in reproduction_report("default", other, shipped, env, default_settings=False)

    hydra = {"model": {"fingerprint": "1" * 64},
             "training": {"environment": env, "init_from": {"model": "default", "fingerprint": "2" * 64}}}
    line = reproduction_report("hydra", hydra, weights_fingerprint(BUILTIN_MODELS["hydra"]), env)
    assert "started from default weights other than the shipped ones" in line and "environment" not in line
