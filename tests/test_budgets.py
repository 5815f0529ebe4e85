"""The readability budgets: no line over 110 characters in any Python file of the repository (root,
tests/ and experiments/); in the files of FILES also no function over 60 lines and no conditional
expression nested in another. Add a file to FILES once it keeps them."""
import ast
import glob
import os

import pytest

from conftest import ROOT

FILES = ("model.py", "moe.py", "tokenizer.py", "decode.py", "residual.py", "mrp.py", "mask_compress.py",
         "eval.py", "tasks.py", "train.py", "train_residual.py", "train_mrp.py", "bench.py", "sandbox.py",
         "experiments/rcd_levers.py")
MAX_FUNCTION_LINES = 60
MAX_LINE = 110


def long_functions(src):
    return [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(src))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]


def long_lines(src):
    return [i for i, line in enumerate(src.splitlines(), 1) if len(line) > MAX_LINE]


def nested_conditionals(src):
    return [n.lineno for n in ast.walk(ast.parse(src)) if isinstance(n, ast.IfExp)
            and any(isinstance(c, ast.IfExp) for c in ast.walk(n) if c is not n)]


@pytest.mark.parametrize("path", FILES)
def test_budgets(path):
    src = open(os.path.join(ROOT, path)).read()
    assert not long_functions(src), f"{path}: over {MAX_FUNCTION_LINES} lines: {long_functions(src)}"
    assert not long_lines(src), f"{path}: lines over {MAX_LINE} characters: {long_lines(src)}"
    assert not nested_conditionals(src), f"{path}: nested conditional expressions: {nested_conditionals(src)}"


def python_files():
    """Every .py file of the repository root, tests/ and experiments/, relative to the root."""
    paths = [p for folder in (ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "experiments"))
             for p in glob.glob(os.path.join(folder, "*.py"))]
    return sorted(os.path.relpath(p, ROOT).replace(os.sep, "/") for p in paths)


@pytest.mark.parametrize("path", python_files())
def test_no_long_lines(path):
    src = open(os.path.join(ROOT, path), encoding="utf-8").read()
    assert not long_lines(src), f"{path}: lines over {MAX_LINE} characters: {long_lines(src)}"


def test_the_checks_catch_what_they_should():
    ok = "def f():\n" + "    x = 1\n" * 59 + "y = '" + "a" * 104 + "'\nz = 1 if x else 2\n"
    assert not long_functions(ok) and not long_lines(ok) and not nested_conditionals(ok)
    bad = "def f():\n" + "    x = 1\n" * 60 + "y = '" + "a" * 105 + "'\nz = 1 if x else 2 if y else 3\n"
    assert long_functions(bad) == ["f (61 lines)"]
    assert long_lines(bad) == [62] and nested_conditionals(bad) == [63]


def test_the_slow_list_names_real_tests():
    """conftest.SLOW marks tests by name: a renamed test must not drop back into the quick suite unnoticed."""
    from conftest import SLOW
    for path, names in SLOW.items():
        tree = ast.parse(open(os.path.join(ROOT, "tests", path)).read())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert set(names) <= defined, f"tests/{path}: no test named {set(names) - defined}"
