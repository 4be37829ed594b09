"""The rollout's bounded per-tick history: what the dashboard and the report draw.

Every judged tick leaves one point: its time, step, phase and weights, per version what the
step's window holds (requests, errors, error rate, p50/p99 latency, accuracy; None where
the window has nothing to say) and per check its verdict, estimate, bounds and the
tolerated region of the quantity it measures. The points are plain JSON (no NaN, numbers
rounded to 4 significant digits) so that the state stays a JSON document (a file, a
custom resource's status).

Bounded: at most ``MAX_POINTS``. When full, the oldest half is thinned by keeping every
other point, so the whole rollout stays visible at a coarser grain; the points where the
step or the phase changed (and the one before each change) and the newest one are always
kept. docs/dashboard.md gives the measured size per point and the worst case.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from mesh_canary.checks import REGISTRY
from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult
from mesh_canary.core.weights import Weights

MAX_POINTS = 120  # ~0.5-0.8 kB each: <= 100 kB in a status for 9 checks (docs/dashboard.md)

Point = Mapping[str, Any]


def _round(x: float | None) -> float | None:
    """Four significant digits, finite or None: small JSON, never NaN."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def quantile(q: float, h: Histogram) -> float | None:
    """Prometheus's histogram_quantile: linear within the bucket holding the q-th observation."""
    total = h.total
    if total <= 0 or not h.bounds:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # beyond the last finite bound: the best known lower bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _count(x: float) -> int | None:
    """A count as an integer; None for what no count is (NaN, infinite, negative: a broken
    source, which the judge fails the check for; the history only leaves a gap)."""
    return round(x) if math.isfinite(x) and x >= 0 else None


def version_point(c: VersionCounts) -> dict[str, Any]:
    """What one version's window holds, counts as integers (rates follow from them)."""
    lat = c.latency_ms
    sane = lat is not None and all(math.isfinite(v) and v >= 0 for v in lat.counts)
    return {
        "requests": _count(c.requests),
        "errors": _count(c.errors),
        "p50Ms": _round(quantile(0.5, lat)) if lat is not None and sane else None,
        "p99Ms": _round(quantile(0.99, lat)) if lat is not None and sane else None,
        "labeled": _count(c.labeled),
        "correct": _count(c.correct),
    }


def error_rate(v: Mapping[str, Any] | None) -> float | None:
    """A version point's error rate; None without requests."""
    if not v or not v.get("requests"):
        return None
    return float(v.get("errors") or 0) / float(v["requests"])


def accuracy(v: Mapping[str, Any] | None) -> float | None:
    """A version point's accuracy on the labels that arrived; None without labels."""
    if not v or not v.get("labeled"):
        return None
    return float(v.get("correct") or 0) / float(v["labeled"])


def check_unit(check: Check | None, result: CheckResult) -> str:
    """The unit of a check's estimate and bounds: rate (a share), ms, ratio or value."""
    if result.quantity.startswith("candidate / stable"):
        return "ratio"
    kind = REGISTRY.get(result.metric)
    if kind is None:
        return "value"
    doc = {"slowerThan": check.slower_than_ms} if check is not None and check.slower_than_ms else {}
    if kind.is_share(doc):
        return "rate"
    return "ms" if result.metric == "latency" else "value"


def tolerance(check: Check | None, result: CheckResult) -> list[float | None] | None:
    """The tolerated region [low, high] of the quantity the result's bounds measure (None
    for an open end), from the bound the result talks about; None when it is not known."""
    if check is None or not result.bound:
        return None
    upper = result.bound.startswith("<=")
    lower = result.bound.startswith(">=")
    q = result.quantity
    limit: float | None = None
    if q.startswith("candidate - stable"):
        limit = (
            check.max_increase if upper else (-check.max_decrease if check.max_decrease is not None else None)
        )
    elif q.startswith("candidate / stable"):
        limit = 1.0 + check.max_increase_ratio if check.max_increase_ratio is not None else None
    elif q.startswith("candidate"):
        limit = check.max if upper else check.min
    elif q.startswith("PSI"):
        limit, upper = check.max_psi, True
    if limit is None or not (upper or lower):
        return None
    return [None, _round(limit)] if upper else [_round(limit), None]


def quantity_tag(quantity: str) -> str:
    """What a result's numbers measure, in one word: a check with several bounds shows
    the most telling one, so this may change from tick to tick."""
    for prefix, tag in (
        ("candidate - stable", "diff"),
        ("candidate / stable", "ratio"),
        ("candidate", "value"),
    ):
        if quantity.startswith(prefix):
            return tag
    return "other"


def check_point(r: CheckResult) -> list[Any]:
    """A check at one tick: [verdict, estimate, lower, upper, what they measure] (the unit
    and tolerance of what they measure are kept once per check, in the history's ``checks``)."""
    return [r.verdict.value, _round(r.estimate), _round(r.lower), _round(r.upper), quantity_tag(r.quantity)]


def check_info(check: Check | None, r: CheckResult) -> dict[str, Any]:
    """What stays the same for a check across ticks: what its bounds measure, their unit
    and the tolerated region."""
    return {
        "quantity": r.quantity,
        "tag": quantity_tag(r.quantity),
        "unit": check_unit(check, r),
        "tolerance": tolerance(check, r),
    }


def point(
    at: float,
    step_index: int,
    phase: str,
    weights: Weights,
    observation: Observation,
    checks: Sequence[CheckResult],
) -> dict[str, Any]:
    """One tick's point. A window with a problem (no data) has no per-version values."""
    usable = observation.problem is None
    return {
        "at": round(at, 1),
        "step": step_index,
        "phase": phase,
        "weight": weights.candidate,
        "mirror": weights.mirror_percent,
        "stable": version_point(observation.stable) if usable else None,
        "candidate": version_point(observation.candidate) if usable else None,
        "checks": {r.name: check_point(r) for r in checks},
    }


def points_of(history: Mapping[str, Any]) -> tuple[Point, ...]:
    """The points of a history (a state's ``timeline``), oldest first; unreadable ones left out."""
    raw = history.get("points")
    if not isinstance(raw, (list, tuple)):
        return ()
    return tuple(p for p in raw if isinstance(p, Mapping) and isinstance(p.get("at"), (int, float)))


def _changes(points: Sequence[Point]) -> set[int]:
    """Indices of the points where the step or phase changed, and of the point before each."""
    keep: set[int] = set()
    for i in range(1, len(points)):
        a, b = points[i - 1], points[i]
        if a.get("step") != b.get("step") or a.get("phase") != b.get("phase"):
            keep.update((i - 1, i))
    return keep


def thin(points: Sequence[Point], limit: int = MAX_POINTS) -> tuple[Point, ...]:
    """At most ``limit`` points: the oldest half thinned to every other point, the changes
    of step and phase and the first and newest points always kept."""
    pts = tuple(points)
    if len(pts) <= limit:
        return pts
    must = _changes(pts) | {0, len(pts) - 1}
    half = len(pts) // 2
    kept = [i for i in range(len(pts)) if i >= half or i % 2 == 0 or i in must]
    if len(kept) > limit:  # many changes: drop the oldest points that are not changes
        spare = [i for i in kept if i not in must]
        drop = set(spare[: len(kept) - limit])
        kept = [i for i in kept if i not in drop]
    if len(kept) > limit:  # still too many (a change at every tick): the newest win
        kept = kept[-limit:]
    return tuple(pts[i] for i in kept)


def appended(points: Sequence[Point], new: Point, limit: int = MAX_POINTS) -> tuple[Point, ...]:
    """The history with ``new`` added, kept within ``limit`` points."""
    out = (*points, new)
    return thin(out, limit) if len(out) > limit else out


class Ticked(Protocol):
    """What a tick leaves that a point reads (the engine's RolloutState)."""

    @property
    def ticks(self) -> int: ...
    @property
    def last_tick_at(self) -> float | None: ...
    @property
    def step_index(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def weights(self) -> Weights: ...
    @property
    def checks(self) -> tuple[CheckResult, ...]: ...
    @property
    def timeline(self) -> Mapping[str, Any]: ...


def after_tick(policy: Policy, before: Ticked, after: Ticked, observation: Observation) -> Mapping[str, Any]:
    """The history after a tick: ``{"checks": {name: {tag: info}}, "points": [...]}`` with one more
    point when the tick judged (counted a tick), unchanged when it only retried a rollback
    or found the rollout finished."""
    if after.ticks == before.ticks or after.last_tick_at is None:
        return after.timeline
    new = point(
        after.last_tick_at, after.step_index, str(after.phase), after.weights, observation, after.checks
    )
    known = after.timeline.get("checks")
    infos: dict[str, Any] = dict(known) if isinstance(known, Mapping) else {}
    by_name = {c.name: c for c in policy.analysis.checks}
    for r in after.checks:
        # A check with several bounds shows the most telling one: each quantity its numbers
        # measured is kept (with its unit and tolerated region), in the order first seen.
        tag = quantity_tag(r.quantity)
        found = infos.get(r.name)
        seen: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        if r.quantity and tag not in seen:
            infos[r.name] = {**seen, tag: check_info(by_name.get(r.name), r)}
    return {"checks": infos, "points": list(appended(points_of(after.timeline), new))}
