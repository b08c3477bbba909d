"""Hook names are spelled in engine/hooks.py alone: every other engine module builds them through it."""

from __future__ import annotations

import ast
from pathlib import Path

import patchstudio.engine

ENGINE = Path(patchstudio.engine.__file__).parent
MARKS = ("blocks.", "hook_", "ln_final.", "attn.")


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """The file's string constants other than docstrings (prose may name hooks)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and ast.get_docstring(node, clean=False) is not None
    }
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_engine_module_but_hooks_spells_a_hook_name():
    found = [f"{path.relative_to(ENGINE)}:{line}: {text!r}"
             for path in sorted(ENGINE.rglob("*.py")) if path.name != "hooks.py" or path.parent != ENGINE
             for line, text in _string_literals(path)
             if any(mark in text for mark in MARKS) and text != "hook_dict"]  # hook_dict: the model's attribute
    assert found == []


def test_the_check_sees_a_hook_name(tmp_path):
    """The scan itself: a literal hook name in code is found, the same words in a docstring are not."""
    source = tmp_path / "m.py"
    source.write_text('"""reads blocks.0.hook_resid_pre"""\nNAME = "blocks.0.hook_resid_pre"\n')
    assert _string_literals(source) == [(2, "blocks.0.hook_resid_pre")]
