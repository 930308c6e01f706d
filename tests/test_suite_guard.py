"""Guard for the fast loop: every test module keeps at least one test outside ``-m "not slow"``'s cut."""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).parent


def _is_slow(node: ast.expr) -> bool:
    """``pytest.mark.slow`` or ``pytest.mark.slow(...)``."""
    if isinstance(node, ast.Call):
        node = node.func
    return isinstance(node, ast.Attribute) and node.attr == "slow"


def _unmarked_tests(tree: ast.Module) -> list[str]:
    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
                      and "slow" in ast.unparse(n.value) for n in tree.body)
    if module_slow:
        return []
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.name.startswith("test") and not any(_is_slow(d) for d in n.decorator_list)]


def test_every_test_module_keeps_a_test_in_the_fast_loop():
    modules = sorted(HERE.rglob("test_*.py"))
    assert len(modules) > 10
    only_slow = [m.name for m in modules if not _unmarked_tests(ast.parse(m.read_text(encoding="utf-8")))]
    assert not only_slow, f"every test of these modules is marked slow (keep one in the fast loop): {only_slow}"


def test_the_guard_sees_slow_marks():
    marked = ast.parse("import pytest\n@pytest.mark.slow\ndef test_a(): pass\n"
                       "@pytest.mark.slow()\ndef test_b(): pass\n")
    assert _unmarked_tests(marked) == []
    module = ast.parse("import pytest\npytestmark = pytest.mark.slow\ndef test_a(): pass\n")
    assert _unmarked_tests(module) == []
    mixed = ast.parse("import pytest\n@pytest.mark.slow\ndef test_a(): pass\ndef test_b(): pass\n")
    assert _unmarked_tests(mixed) == ["test_b"]
