"""Layering, written down: the engine imports no deployable and no example; deployables never
import each other.

(import-linter needs importable packages on both sides; dags/, serving/, plugins/ and
feature_repo/ are deployable folders, not packages, so the contract is checked on the AST.)

The engine must not reach the examples by a side door either: no ``import_module("examples…")``,
``spec_from_file_location(…, "examples/…")`` or ``Path("examples")`` in ``flywheel/``. Docstrings
and comments may mention the examples; only strings handed to an import or a path count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = ("dags", "serving", "plugins", "feature_repo")
EXAMPLES = "examples"
# Calls that load code or build a path from their string arguments.
LOADERS = {"import_module", "__import__", "spec_from_file_location", "run_path", "run_module",
           "Path", "PurePath", "PosixPath", "joinpath", "files", "resource_filename"}


def imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _strings(node: ast.AST) -> list[str]:
    """String constants inside an argument (plain, f-string parts, ``a / "b"`` path parts)."""
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _names_examples(text: str) -> bool:
    parts = text.replace("\\", "/").replace(".", "/").split("/")
    return EXAMPLES in parts


def example_loads(tree: ast.AST) -> list[str]:
    """Each place that imports or builds a path into ``examples/``, as ``line: code``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node) in LOADERS:
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(_names_examples(s) for arg in args for s in _strings(arg)):
                found.append(f"{node.lineno}: {_called_name(node)}(...)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            # Path arithmetic: ROOT / "examples" / ...
            sides = [node.left, node.right]
            if any(isinstance(s, ast.Constant) and isinstance(s.value, str) and _names_examples(s.value)
                   for s in sides):
                found.append(f"{node.lineno}: ... / 'examples'")
    return found


def engine_files() -> list[Path]:
    return sorted((ROOT / "flywheel").rglob("*.py"))


@pytest.mark.parametrize("folder", ["flywheel", *DEPLOYABLES])
def test_imports_respect_the_layers(folder):
    forbidden = set(DEPLOYABLES) - {folder}
    if folder == "flywheel":
        forbidden.add(EXAMPLES)
    offenders = {}
    for path in (ROOT / folder).rglob("*.py"):
        wrong = imported_roots(ast.parse(path.read_text())) & forbidden
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offenders == {}


def test_the_engine_loads_no_example_by_path_or_importlib():
    offenders = {}
    for path in engine_files():
        found = example_loads(ast.parse(path.read_text()))
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


@pytest.mark.parametrize("source, caught", [
    ("import examples.fraud.generator", "import"),
    ("from examples.fraud import simulation", "import"),
    ("import importlib\nimportlib.import_module('examples.fraud.generator')", "load"),
    ("from importlib import import_module\nimport_module(f'examples.{name}.generator')", "load"),
    ("import importlib.util as u\nu.spec_from_file_location('g', 'examples/fraud/generator.py')", "load"),
    ("from pathlib import Path\nPath(__file__).parents[1] / 'examples' / 'fraud'", "load"),
    ("from pathlib import Path\nPath('examples', 'fraud', 'generator.py')", "load"),
    ("__import__('examples')", "load"),
    ('"""Example code lives under examples/ (never imported)."""\n# see examples/fraud', None),
    ("x = 'examples are data'\nprint('see examples/demo.py')", None),
])
def test_the_check_catches_each_side_door(source, caught):
    """The rule itself, on snippets: imports and loads are caught, prose is not."""
    tree = ast.parse(source)
    found = "import" if EXAMPLES in imported_roots(tree) else "load" if example_loads(tree) else None
    assert found == caught
