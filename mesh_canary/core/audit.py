"""The audit record: every decision of a rollout, appended as plain data to its state.

Tick verdicts (each check's verdict, estimate and bounds), weight writes (who, why),
people's commands, hook answers and notifications queued. It lives in the state (the
state file of `mesh-canary run --state`, the ModelRollout's ``status.rollout``), bounded:
the last ``AUDIT_LIMIT`` entries are kept and ``auditDropped`` counts the older ones.
Times are the driver's clock (seconds since the epoch for `run` and the controller).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mesh_canary.core.verdicts import CheckResult

AUDIT_LIMIT = 300
"""Entries kept per rollout (about 2.5 hours of 30 s ticks with a few writes and commands;
a few hundred bytes each, so the status stays far below the apiserver's object limit)."""


def appended(
    audit: tuple[Mapping[str, Any], ...], dropped: int, entries: Sequence[Mapping[str, Any]]
) -> tuple[tuple[Mapping[str, Any], ...], int]:
    """The record with ``entries`` appended, the oldest dropped beyond the limit (counted)."""
    merged = (*audit, *entries)
    over = max(len(merged) - AUDIT_LIMIT, 0)
    return merged[over:], dropped + over


def check_entry(r: CheckResult) -> dict[str, Any]:
    """A check's verdict in the record: what it was judged to be and how sure."""
    return {
        "name": r.name,
        "verdict": r.verdict.value,
        "estimate": r.estimate,
        "lower": r.lower,
        "upper": r.upper,
        "quantity": r.quantity,
        "bound": r.bound,
        "samples": r.samples,
    }
