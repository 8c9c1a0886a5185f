"""Layering, written down: the engine imports no deployable; deployables never import each other.

(import-linter needs importable packages on both sides; dags/, serving/, plugins/ and
feature_repo/ are deployable folders, not packages, so the contract is checked on the AST.)
"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = ("dags", "serving", "plugins", "feature_repo")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("folder", ["flywheel", *DEPLOYABLES])
def test_imports_respect_the_layers(folder):
    forbidden = set(DEPLOYABLES) - {folder}
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & forbidden)
        for path in (ROOT / folder).rglob("*.py")
        if imported_roots(path) & forbidden
    }
    assert offenders == {}
