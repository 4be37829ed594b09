"""The core is pure: it imports no adapter, no driver and no I/O or clock library."""

from __future__ import annotations

import ast
from pathlib import Path

import mesh_canary

CORE = Path(mesh_canary.__file__).parent / "core"
FORBIDDEN = (
    "mesh_canary.adapters",
    "mesh_canary.localmesh",
    "mesh_canary.cli",
    "mesh_canary.runner",
    "mesh_canary.drivers",
    "mesh_canary.controller",
    "httpx",
    "kubernetes",
    "prometheus_api_client",
    "prometheus_client",
    "requests",
    "urllib",
    "http",
    "socket",
    "subprocess",
    "threading",
    "asyncio",
    "time",
    "datetime",
    "random",  # randomness comes in through the drivers (simulation), seeded
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_imports_no_adapter_and_no_io() -> None:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 8, "the core package moved?"
    offenders = {
        f"{f.name}: {m}"
        for f in files
        for m in imported_modules(f)
        if any(m == bad or m.startswith(bad + ".") for bad in FORBIDDEN)
    }
    assert not offenders, f"the core must stay pure, but imports {sorted(offenders)}"


def test_core_does_not_open_files_or_read_input() -> None:
    """Importing no I/O module is not enough: the builtins open() and input() are I/O too."""
    for f in CORE.glob("*.py"):
        tree = ast.parse(f.read_text(), filename=str(f))
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not calls & {"open", "input", "print", "exec", "eval"}, (
            f"{f.name} calls {sorted(calls & {'open', 'input', 'print', 'exec', 'eval'})}"
        )
