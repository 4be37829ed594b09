"""The layers: what each package may import (by AST, every module), and a pure core.

The core (``core/`` and the check kinds in ``checks/``, one layer) imports nothing of ours
but the core and the error tree (mesh_canary.errors), and no I/O or clock library. Every other
package has a row in ``ALLOWED``: the parts of mesh_canary it may import besides itself.
A new package or top-level module must get a row (the test says so), so the table stays
the one description of the layering.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mesh_canary

PACKAGE = Path(mesh_canary.__file__).parent
CORE = PACKAGE / "core"
CHECKS = PACKAGE / "checks"
# The core layer: the pure core and the check kinds (each reads the other).
CORE_LAYER = ("mesh_canary.core", "mesh_canary.checks")

# Anyone may import these leaf modules: they import nothing of ours but each other.
LEAVES = ("mesh_canary.redact", "mesh_canary.logs", "mesh_canary.modelmetrics", "mesh_canary.errors")
# The adapters' common ground: the pure core, the small Protocols, redaction.
ADAPTER_BASE = (*CORE_LAYER, "mesh_canary.protocols", "mesh_canary.redact")

# unit -> what of ours it may import besides itself and LEAVES ("*": anything).
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": ("mesh_canary.checks",),
    "checks": ("mesh_canary.core",),
    "protocols": CORE_LAYER,
    "redact": (),
    "logs": (),
    "modelmetrics": (),
    "errors": (),
    "routing": ADAPTER_BASE,
    "metrics": ADAPTER_BASE,
    # The status shows the one rollout view (a pure module of present/).
    "kube": (*ADAPTER_BASE, "mesh_canary.present.view"),
    # Notifiers POST through the metrics side's deadline client (one total deadline per call).
    "notify": (*ADAPTER_BASE, "mesh_canary.metrics.deadline_http"),
    # A model registry's REST client uses the metrics layer's deadline-bound HTTP client.
    "registry": (*ADAPTER_BASE, "mesh_canary.metrics.deadline_http"),
    # Views read state and our resource's names; they never reach a backend or the runner.
    "present": (*CORE_LAYER, "mesh_canary.kube.names"),
    # Synthetic traffic and the simulator: the core, and the runner (phase 2 drives it on a virtual clock).
    "simulation": (*CORE_LAYER, "mesh_canary.protocols", "mesh_canary.run"),
    # The embedded mesh brings its own router and metrics; neither imports it back (no circle).
    "localmesh": (
        "mesh_canary",
        *CORE_LAYER,
        "mesh_canary.routing.local",
        "mesh_canary.metrics.local",
        "mesh_canary.collector.events",  # the payload logger sends what the collector parses
    ),
    # The prediction-label collector: a service of its own; durations from the core.
    "collector": CORE_LAYER,
    "run": (
        *CORE_LAYER,
        "mesh_canary.protocols",
        "mesh_canary.routing",
        "mesh_canary.metrics",
        "mesh_canary.kube",
        "mesh_canary.notify",
        "mesh_canary.registry",
        "mesh_canary.present",
        "mesh_canary.simulation",
        "mesh_canary.localmesh",
    ),
    "controller": (
        "mesh_canary.run",
        "mesh_canary.routing",
        "mesh_canary.metrics",
        "mesh_canary.kube",
        "mesh_canary.notify",
        "mesh_canary.registry",  # resolve at start, announce the outcome (controller/registry.py)
        *CORE_LAYER,
        "mesh_canary.protocols",
    ),
    "cli": ("*",),
    "__main__": ("mesh_canary.cli",),
    "__init__": (),
}

FORBIDDEN_IN_CORE = (
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


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_ours_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (
        PACKAGE.parent / rel / "__init__.py"
    ).is_file()


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # a relative import: resolve it against this module's package
                own = (
                    module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                )
                base = own.split(".")[: len(own.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # ``from mesh_canary.run import wiring`` imports the submodule mesh_canary.run.wiring
            names.update(f"{module}.{a.name}" for a in node.names if is_ours_module(f"{module}.{a.name}"))
    return names


def unit_of(module: str) -> str:
    """``mesh_canary.routing.istio`` -> ``routing``; ``mesh_canary`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def our_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_unit_has_a_row() -> None:
    units = {unit_of(module_name(p)) for p in our_modules()}
    assert not units - ALLOWED.keys(), f"add a row to ALLOWED for {sorted(units - ALLOWED.keys())}"
    assert {
        "core",
        "checks",
        "routing",
        "metrics",
        "kube",
        "run",
        "controller",
        "present",
        "localmesh",
    } <= units


def test_every_module_imports_only_what_its_layer_allows() -> None:
    offenders: list[str] = []
    for path in our_modules():
        name = module_name(path)
        unit = unit_of(name)
        allowed = ALLOWED[unit]
        if "*" in allowed:
            continue
        own = f"mesh_canary.{unit}" if unit != "__init__" else "mesh_canary"
        for m in sorted(imported_modules(path)):
            if not within(m, "mesh_canary") or (unit != "__init__" and within(m, own)):
                continue
            if m == "mesh_canary":  # the package root (its file's location), by explicit leave only
                ok = "mesh_canary" in allowed
            else:
                ok = any(within(m, p) for p in LEAVES + allowed if p != "mesh_canary")
            if not ok:
                offenders.append(f"{name} imports {m}")
    assert not offenders, "layering broken:\n" + "\n".join(offenders)


def test_leaves_import_nothing_of_ours_but_leaves() -> None:
    for leaf in LEAVES:
        path = PACKAGE.parent / Path(*leaf.split(".")).with_suffix(".py")
        ours = {m for m in imported_modules(path) if within(m, "mesh_canary")}
        assert all(any(within(m, other) for other in LEAVES) for m in ours), f"{leaf} imports {sorted(ours)}"


def test_nothing_below_localmesh_imports_it() -> None:
    """The old circle: the local router and metrics must not import the mesh that uses them."""
    for path in our_modules():
        unit = unit_of(module_name(path))
        if unit in {"localmesh", "run", "cli"}:
            continue
        assert not any(within(m, "mesh_canary.localmesh") for m in imported_modules(path)), path


def core_layer_files() -> list[Path]:
    """Every module of the core layer, in sub-packages too (core/policy/)."""
    return sorted(p for root in (CORE, CHECKS) for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_core_imports_no_adapter_and_no_io() -> None:
    files = core_layer_files()
    assert len(files) >= 20, "the core package moved?"
    assert {CORE / "policy" / "rules.py", CHECKS / "latency.py"} <= set(files)
    offenders = {
        f"{f.relative_to(PACKAGE)}: {m}"
        for f in files
        for m in imported_modules(f)
        if any(within(m, bad) for bad in FORBIDDEN_IN_CORE)
        or (
            within(m, "mesh_canary")
            and not any(within(m, layer) for layer in (*CORE_LAYER, "mesh_canary.errors"))
        )
    }
    assert not offenders, f"the core must stay pure, but imports {sorted(offenders)}"


def test_core_does_not_open_files_or_read_input() -> None:
    """Importing no I/O module is not enough: the builtins open() and input() are I/O too."""
    for f in core_layer_files():
        tree = ast.parse(f.read_text(), filename=str(f))
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not calls & {"open", "input", "print", "exec", "eval"}, (
            f"{f.name} calls {sorted(calls & {'open', 'input', 'print', 'exec', 'eval'})}"
        )


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The AST reader catches lazy and submodule imports (or the table above proves nothing)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from mesh_canary.run import wiring\n    import mesh_canary.cli\n")
    found = imported_modules(src)
    assert {"mesh_canary.run", "mesh_canary.run.wiring", "mesh_canary.cli"} <= found
