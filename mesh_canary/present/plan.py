"""`mesh-canary plan`: a policy's power at a traffic rate, as a document and as a table."""

from __future__ import annotations

from typing import Any

from mesh_canary.core.model import Policy
from mesh_canary.core.power import POWER, CheckPower, Traffic, plan, unreachable


def _check_document(cp: CheckPower) -> dict[str, Any]:
    return {
        "name": cp.name,
        "metric": cp.metric,
        "labelBased": cp.label_based,
        "estimated": cp.supported,
        "summary": cp.words(),
        "steps": [
            {
                "step": s.step,
                "weight": s.weight,
                "candidateSamples": round(s.candidate, 1),
                "stableSamples": round(s.stable, 1),
                "minimum": s.minimum,
                "reachable": s.reachable,
                # The smallest detectable rise of the error rate (or drop of accuracy), as a
                # share; null when none is detectable (or not estimated for this kind).
                "smallestEffect": s.effect,
                "smallestEffectRatio": s.ratio,
            }
            for s in cp.steps
        ],
    }


def plan_document(policy: Policy, traffic: Traffic) -> dict[str, Any]:
    """The `plan` command's document (docs/cli.md, the output schema's ``plan``)."""
    return {
        "policy": policy.name,
        "rps": traffic.rps,
        "power": POWER,
        "assumed": {
            "errorRate": traffic.error_rate,
            "accuracy": traffic.accuracy,
            "labelDelayS": traffic.label_delay_s,
            "labelled": traffic.labelled,
        },
        "checks": [_check_document(cp) for cp in plan(policy, traffic)],
        "warnings": unreachable(policy, traffic),
    }
