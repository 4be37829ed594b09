"""The check kinds: one module per kind, one line per kind in ``REGISTRY``.

Every other layer reads the registry instead of naming kinds: the policy schema's metric
enum (filled in from it when the schema loads), the policy's rules and default names, the
judge's dispatch, the engine's label-based rule, the Prometheus adapter's query planning
(the signals a kind needs), the simulator's signals and the report's words. Adding a kind
is one module with a ``CheckKind`` and one line here; the generated CRD
(``python -m mesh_canary.kube.crd``) then lists it too.

Part of the pure core: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh_canary.checks import custom, drift, error_rate, labels, latency, traffic_share
from mesh_canary.checks.base import BOUNDS, SIGNALS, CheckKind, Signal, tolerance_words
from mesh_canary.core.model import Check

__all__ = [
    "BOUNDS",
    "REGISTRY",
    "SIGNALS",
    "CheckKind",
    "Signal",
    "UnknownCheckKind",
    "kind_of",
    "signals_of",
    "tolerance_words",
]

REGISTRY: dict[str, CheckKind] = {
    kind.name: kind
    for kind in (
        error_rate.KIND,
        latency.KIND,
        labels.ACCURACY,
        labels.PRECISION,
        labels.RECALL,
        labels.F1,
        drift.PREDICTION,
        drift.FEATURE,
        traffic_share.KIND,
        custom.KIND,
    )
}


class UnknownCheckKind(ValueError):
    """A check whose metric no registered kind has."""


def kind_of(check: Check | str) -> CheckKind:
    """The kind of a check (or of a metric name); UnknownCheckKind names it when none is."""
    name = check if isinstance(check, str) else check.metric
    kind = REGISTRY.get(name)
    if kind is None:
        raise UnknownCheckKind(f"unknown metric {name!r}")
    return kind


def signals_of(checks: Iterable[Check]) -> set[Signal]:
    """The signals (requests, errors, latency, confusion, ...) the checks read."""
    needed: set[Signal] = set()
    for check in checks:
        kind = REGISTRY.get(check.metric)
        if kind is not None:
            needed |= kind.signals
    return needed
