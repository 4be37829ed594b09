"""errorRate: the share of requests that failed (5xx), judged as a rate."""

from __future__ import annotations

from mesh_canary.checks.base import CheckKind, Judging
from mesh_canary.checks.bounds import Subject
from mesh_canary.checks.evidence import Evidence, num
from mesh_canary.checks.rates import Prepared, RateKind, evaluate_rate
from mesh_canary.core.model import Check
from mesh_canary.core.observations import VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext


def _counts(check: Check, counts: VersionCounts) -> tuple[float, float]:
    return num(counts.errors), num(counts.requests)


def _prepare(check: Check, ev: Evidence, ctx: JudgeContext) -> Prepared:
    return Subject("error rate", "rate", "requests"), []


RATE = RateKind(_counts, _prepare, lambda check: "no requests")


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    return evaluate_rate(RATE, judge, check, ev, ctx, alpha)


KIND = CheckKind(
    name="errorRate",
    title="error rate",
    bounds=("max", "maxIncrease", "maxIncreaseRatio"),
    signals=frozenset({"requests", "errors"}),
    evaluate=_evaluate,
    counts=lambda check, c: [("requests", c.requests), ("errors", c.errors)],
    is_share=lambda check: True,
    rate=_counts,
)
