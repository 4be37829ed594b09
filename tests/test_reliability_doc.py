"""docs/reliability.md is the fault matrix: every test it names exists and is marked as a
fault test, and every item of the safety issue (1-15) has a row."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


def _tests_in(path: Path) -> dict[str, set[int]]:
    """Test function name -> the fault items it is marked with (empty: not marked)."""
    tree = ast.parse(path.read_text())
    module_items = _items(getattr(tree, "body", []), module=True)
    found: dict[str, set[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            found[node.name] = _items(node.decorator_list) | module_items
    return found


def _items(nodes: list[ast.AST] | list[ast.expr], module: bool = False) -> set[int]:
    items: set[int] = set()
    for node in nodes:
        text = ast.unparse(node)
        if module and "pytestmark" not in text:
            continue
        items.update(int(n) for n in re.findall(r"fault\(item=(\d+)\)", text))
    return items


def test_every_test_the_matrix_names_exists_and_is_a_fault_test() -> None:
    text = DOC.read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(refs) >= 25
    for path, name in refs:
        tests = _tests_in(ROOT / path)
        assert name in tests, f"docs/reliability.md names {path}::{name}, which does not exist"
        if path.startswith("tests/faults/"):
            assert tests[name], f"{path}::{name} is not marked @pytest.mark.fault(item=N)"


def test_every_item_of_the_safety_issue_has_a_row() -> None:
    rows = re.findall(r"^\| (\d+) \|", DOC.read_text(), flags=re.MULTILINE)
    assert set(range(1, 16)) <= {int(r) for r in rows}
