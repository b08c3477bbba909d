"""Path patching against a plain-hook reference written here: one or two forward passes per sender."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import references as R
from helpers import TINY_PAIRS
from patchstudio.engine.inputs import InputError
from patchstudio.engine.run import run
from patchstudio.specs import parse_spec

TOL = 1e-4


def _reference(model, direction, receivers):
    """Wang et al.'s definition by plain hooks (tests/references.py), on the tiny pairs."""
    return R.path_patching(model, R.pairs_of(model, TINY_PAIRS), direction, receivers)


RECEIVER_SETS = {
    "logits": [],
    "one query": [{"layer": 1, "head": 2, "input": "q"}],
    "keys and values": [{"layer": 1, "head": 0, "input": "k"}, {"layer": 1, "head": 3, "input": "v"}],
}


@pytest.mark.parametrize("receivers", list(RECEIVER_SETS))
@pytest.mark.parametrize("direction", ["noise", "denoise"])
def test_path_patching_equals_the_plain_hook_reference(tiny_model, receivers, direction):
    spec = {"method": "path_patching", "prompts": TINY_PAIRS, "component": "head", "direction": direction,
            "receivers": RECEIVER_SETS[receivers]}
    result = run(tiny_model, spec)
    ref = _reference(tiny_model, direction, RECEIVER_SETS[receivers])
    got = torch.tensor(result.values)
    assert result.axes == ["layer", "head"]
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    base = result.clean if direction == "noise" else result.corrupted
    assert (got - base).abs().max() > 1e-3  # some path matters
    if receivers != "logits":  # senders in the receivers' layer have no path to them
        assert torch.allclose(got[1], torch.full_like(got[1], base), atol=1e-5)


def test_path_to_the_logits_from_the_last_layer_equals_activation_patching(tiny_model):
    """A last-layer head's only route onward is the residual stream to the logits (and the MLP)."""
    path = run(tiny_model, {"method": "path_patching", "prompts": TINY_PAIRS, "component": "head"})
    act = run(tiny_model, {"prompts": TINY_PAIRS, "component": "head", "direction": "noise"})
    assert torch.allclose(torch.tensor(path.values[-1]), torch.tensor(act.values[-1]), atol=1e-5)


def test_bad_path_patching_specs_name_the_problem(tiny_model):
    with pytest.raises(ValidationError, match="component must be 'head'"):
        parse_spec({"method": "path_patching", "prompts": TINY_PAIRS, "component": "mlp_out"})
    with pytest.raises(ValidationError, match="positions must be 'all'"):
        parse_spec({"method": "path_patching", "prompts": TINY_PAIRS, "positions": "each"})
    with pytest.raises(InputError, match="receiver L5 H0 does not exist: the model has 2 layers of 4 heads"):
        run(tiny_model, {"method": "path_patching", "prompts": TINY_PAIRS, "receivers": [{"layer": 5, "head": 0}]})


RECEIVERS_4_LAYERS = [{"layer": 2, "head": 1, "input": "q"}, {"layer": 3, "head": 0, "input": "k"},
                      {"layer": 3, "head": 2, "input": "v"}, {"layer": 1, "head": 3, "input": "v"}]


@pytest.mark.parametrize("receivers", [[], RECEIVERS_4_LAYERS], ids=["logits", "receivers-in-layers-1-to-3"])
def test_four_layers_freeze_every_later_head_not_just_the_next_layer(perturbed_model, receivers):
    """With four layers, a sender in layer 0 reaches receivers two and three layers on: every head of
    every later layer must stay frozen at the base run (two layers hide a next-layer-only freeze)."""
    result = run(perturbed_model, {"method": "path_patching", "prompts": TINY_PAIRS, "receivers": receivers})
    ref = _reference(perturbed_model, "noise", receivers)
    got = torch.tensor(result.values)
    assert got.shape == (4, 4)
    assert torch.allclose(got, ref, atol=TOL), (got - ref).abs().max()
    assert (got[:2] - result.clean).abs().max() > 1e-2  # early senders do reach the later layers
