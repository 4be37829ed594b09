"""latency: a quantile of the latency histogram (``quantile``), or the share of requests
slower than a bound (``slowerThan``, judged as a rate)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_canary.checks.base import CheckKind, Judging, is_number, milliseconds
from mesh_canary.checks.bounds import (
    Est,
    Outcome,
    Subject,
    bounds_of,
    combine,
    difference,
    inconclusive,
    judge_bound,
    ratio_from_arms,
)
from mesh_canary.checks.evidence import Evidence, latency_histograms, num, stable_counts
from mesh_canary.checks.rates import Prepared, RateKind, evaluate_rate
from mesh_canary.checks.words import millis, quantile_name
from mesh_canary.core import stats
from mesh_canary.core.frozen import replace
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext

INF = math.inf
DEFAULT_QUANTILE = 0.99
_DIFFERENT_BUCKETS = "the two versions' latency histograms have different buckets"

# ---------------------------------------------------------------------------------------
# The share slower than a bound


def _slower_counts(check: Check, counts: VersionCounts) -> tuple[float, float]:
    h = counts.latency_ms
    if h is None or not h.counts or check.slower_than_ms is None:
        return 0.0, 0.0
    above, total, _ = stats.share_above(h.bounds, h.counts, check.slower_than_ms)
    return num(above), num(total)


def _prepare_slower(check: Check, ev: Evidence, ctx: JudgeContext) -> Prepared:
    window = ev.window
    h = window.candidate.latency_ms
    threshold = float(check.slower_than_ms or 0.0)
    if h is None or not h.counts:
        return inconclusive(check, "no data for the candidate: no latency histogram")
    used = stats.share_above(h.bounds, h.counts, threshold)[2]
    if used != used:
        return inconclusive(check, f"no bucket bound at or above {millis(threshold)} to judge against")
    notes = []
    if used != threshold:
        notes.append(
            f"judged at {millis(used)}, the next bucket bound above {millis(threshold)} (the share "
            f"slower than {millis(threshold)} can only be higher)"
        )
    hs = stable_counts(window, ctx).latency_ms
    if hs is not None and hs.counts and hs.bounds != h.bounds:
        return inconclusive(check, _DIFFERENT_BUCKETS, samples=_slower_counts(check, window.candidate)[1])
    return Subject(f"share slower than {millis(used)}", "rate", "requests"), notes


SLOWER = RateKind(_slower_counts, _prepare_slower, lambda check: "no requests")

# ---------------------------------------------------------------------------------------
# A quantile


@dataclass(frozen=True)
class _Quantile:
    """A quantile check's histograms, judged at any level."""

    judge: Judging
    q: float
    bounds: list[tuple[str, float]]
    hc: Histogram
    hs: Histogram | None
    stable_ok: bool

    def judged_at(self, level: float, fixed: bool = False) -> tuple[Est, Est | None, list[Outcome]]:
        a = level if fixed else level / (2 if self.stable_ok else 1)
        prior = self.judge.small_rate_prior
        bc = stats.quantile_bracket(self.hc.bounds, self.hc.counts, self.q, a, prior, fixed)
        cand = Est(bc.estimate, bc.lower, bc.upper, a, exclusive=True)
        stable: Est | None = None
        diff = ratio = None
        if self.stable_ok and self.hs is not None:
            bs = stats.quantile_bracket(self.hs.bounds, self.hs.counts, self.q, a, prior, fixed)
            stable = Est(bs.estimate, bs.lower, bs.upper, a, exclusive=True)
            diff = difference(cand, stable, a)
            ratio = ratio_from_arms(cand, stable, a)
        return cand, stable, [judge_bound(k, v, cand, diff, ratio, "ms") for k, v in self.bounds]


def _evaluate_quantile(
    judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float
) -> CheckResult:
    q = check.quantile if check.quantile is not None else DEFAULT_QUANTILE
    hc, hs = latency_histograms(ev.window, ctx)
    n_c = num(hc.total) if hc is not None and hc.counts else 0.0
    if hc is None or n_c <= 0:
        return inconclusive(check, "no data for the candidate: no latency observations in this window")
    n_s = num(hs.total) if hs is not None and hs.counts else 0.0
    bounds = bounds_of(check)
    if not bounds:
        return inconclusive(check, "no bound to judge", samples=n_c, enough=True)
    if hs is not None and hs.counts and hs.bounds != hc.bounds:
        return inconclusive(check, _DIFFERENT_BUCKETS, samples=n_c)
    relative = bool({k for k, _ in bounds} - {"max", "min"})
    case = _Quantile(judge, q, bounds, hc, hs, relative and n_s > 0)
    notes: list[str] = []
    if relative and not case.stable_ok:
        notes.append("no data for stable in this window")
    tail_ratio = 1.0 + next((v for k, v in bounds if k == "maxIncreaseRatio"), 0.2)
    cand, stable, outcomes = case.judged_at(alpha)

    def lenient(level: float) -> list[Outcome]:
        outs = case.judged_at(level, True)[2]
        if not case.stable_ok or hs is None:
            return outs
        # Coarse buckets rarely separate two brackets, so a rise leans when the candidate
        # has more mass than stable above the bucket bound below its estimate.
        heavier = _heavier_tail(judge, ev, ctx, hc, cand.est, level, tail_ratio)
        rising = ("maxIncrease", "maxIncreaseRatio")
        return [replace(o, failed=True) if heavier and o.kind in rising and not o.failed else o for o in outs]

    # Quantile point estimates are interpolations inside coarse buckets: never lean on
    # them alone, whatever the step.
    outcomes = judge.lean(outcomes, lenient, judge.lean_threshold(ctx, ev.current, judge.lean_alpha))
    notes += _bracket_notes(q, n_c, cand, stable, outcomes)
    subject = Subject(f"p{quantile_name(q)} latency", "ms", "requests")
    return combine(
        check, subject, outcomes, cand, stable, n_c, n_s if relative else None, ctx.min_requests, notes
    )


def _bracket_notes(q: float, n_c: float, cand: Est, stable: Est | None, outcomes: list[Outcome]) -> list[str]:
    """Why a quantile's brackets may not decide: too few samples in the tail, or buckets
    too coarse for the tolerance."""
    notes = []
    if math.isinf(cand.hi):
        notes.append(
            f"only ~{n_c * (1.0 - q):.0f} candidate samples lie beyond its p{quantile_name(q)}: too few to "
            f"bound it from above (that takes a few hundred requests beyond it)"
        )
    undecided = any(o.relative and not o.passed and not o.failed for o in outcomes)
    if undecided and stable is not None and math.isfinite(cand.hi) and math.isfinite(stable.hi):
        notes.append(
            f"bracketed by buckets: candidate ({millis(cand.lo)}, {millis(cand.hi)}], stable "
            f"({millis(stable.lo)}, {millis(stable.hi)}]; the buckets may be too coarse to prove "
            f"the tolerance"
        )
    return notes


def _heavier_tail(
    judge: Judging,
    ev: Evidence,
    ctx: JudgeContext,
    candidate: Histogram,
    estimate: float,
    level: float,
    ratio: float,
) -> bool:
    """Does the candidate have more than ``ratio`` times stable's share of requests above
    the largest bucket bound below ``estimate``, with the posterior probability that
    ``level`` asks for (the two-arm share of those slow requests, over the evidence's
    strata)? For leaning only."""
    below = [i for i, b in enumerate(candidate.bounds) if b < estimate and b != INF]
    if not below:
        return False
    i = below[-1]
    slow_c, slow_s, shares = [], [], []
    for w in ev.strata:
        hc, hs = latency_histograms(w, ctx)
        if hc is None or hs is None or hc.bounds != candidate.bounds or hs.bounds != candidate.bounds:
            continue
        n_c, n_s = num(hc.total), num(hs.total)
        if n_c <= 0 or n_s <= 0:
            continue
        slow_c.append(num(n_c - num(hc.counts[i])))
        slow_s.append(num(n_s - num(hs.counts[i])))
        shares.append(n_c / (n_c + n_s))
    if not shares:
        return False
    profile = stats.ratio_profile(slow_c, slow_s, shares, ratio, scale=judge.ratio_scale)
    return profile.prob_above(judge.lean_prior_sd) >= judge.lean_probability(level)


# ---------------------------------------------------------------------------------------
# The kind


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    if check.slower_than_ms is not None:
        return evaluate_rate(SLOWER, judge, check, ev, ctx, alpha)
    return _evaluate_quantile(judge, check, ev, ctx, alpha)


def _default_name(check: Mapping[str, Any]) -> str:
    quantile = check.get("quantile")
    if is_number(quantile):
        return f"latency-p{float(quantile) * 100:g}"
    slower = milliseconds(check.get("slowerThan"))
    if slower is not None:
        return f"latency-slower-than-{slower:g}ms"
    return "latency"


def _rules(check: Mapping[str, Any], variables: frozenset[str]) -> list[tuple[str, str]]:
    if "quantile" in check and "slowerThan" in check:
        return [("slowerThan", "a latency check takes quantile or slowerThan, not both")]
    if "quantile" not in check and "slowerThan" not in check:
        return [("", "a latency check needs quantile (e.g. 0.99) or slowerThan (e.g. 250ms)")]
    return []


def _counts(check: Check, counts: VersionCounts) -> list[tuple[str, float]]:
    h = counts.latency_ms
    return [("latency bucket", c) for c in h.counts] if h is not None else []


KIND = CheckKind(
    name="latency",
    title="latency",
    bounds=("max", "maxIncrease", "maxIncreaseRatio"),
    qualifiers=("quantile", "slowerThan"),
    signals=frozenset({"requests", "latency"}),
    evaluate=_evaluate,
    counts=_counts,
    default_name=_default_name,
    is_share=lambda check: "slowerThan" in check,
    takes_duration=lambda check: "slowerThan" not in check,
    rules=_rules,
    rate=_slower_counts,
)
