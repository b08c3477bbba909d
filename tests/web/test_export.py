"""The Python export: the spec literal is Python for the same data, prompts' words included."""

from __future__ import annotations

import ast

import pytest

from patchstudio.web.export import python_literal


@pytest.mark.parametrize("data", [
    {"flag": True, "off": False, "none": None, "n": [1, 2.5, -3]},
    # JSON's words inside a prompt stay as written; only the bare values become True/False/None
    {"clean": 'it is true: null, "false" and \\"true\\"', "answer": " true", "wrong": "null", "x": None},
    {"prompts": [{"clean": "Ünïcödé — true", "corrupted": "false\ttrue\nnull"}], "seed": 0, "y": [True, None]},
])
def test_the_spec_literal_is_python_for_the_same_data(data):
    assert ast.literal_eval(python_literal(data)) == data
