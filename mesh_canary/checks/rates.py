"""Checks that judge a proportion: error rate, the share slower than a latency, accuracy,
precision, recall and F1 (see docs/statistics.md).

Each such kind says how to read its ``(events, trials)`` from one version's counts and how
its rate is estimated (:class:`RateKind`); :func:`evaluate_rate` does the rest: confidence
sequences per arm and, for relative bounds with a concurrent stable arm, the two-arm ratio
test over the rollout's steps (each with its own traffic share).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh_canary.checks import dispersion
from mesh_canary.checks.base import Judging
from mesh_canary.checks.bounds import (
    Est,
    Outcome,
    Subject,
    bounds_of,
    combine,
    difference,
    div,
    inconclusive,
    intersect,
    judge_bound,
    ratio_from_arms,
    with_leaning,
)
from mesh_canary.checks.evidence import Evidence, concurrent, labelled, min_samples, stable_counts
from mesh_canary.core import stats
from mesh_canary.core.frozen import replace
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext

INF = math.inf

Prepared = tuple[Subject, list[str]] | CheckResult


@dataclass(frozen=True)
class RateKind:
    """How a rate check reads and estimates its rate.

    ``counts``: ``(events, trials)`` from one version. ``prepare``: what the verdict is
    about and notes for its sentence, or an early verdict (a histogram that cannot be
    read). ``missing``: what the candidate lacks when it has no trials. ``complement``:
    judged as the rate of the trials that are not events, then flipped (accuracy, a high
    rate judged as its small error rate). ``transform``: the metric as a monotone function
    of the rate (F1 from TP / (TP + FP + FN)); such a rate has no two-arm test.
    """

    counts: Callable[[Check, VersionCounts], tuple[float, float]]
    prepare: Callable[[Check, Evidence, JudgeContext], Prepared]
    missing: Callable[[Check], str]
    general_prior: bool = False
    complement: bool = False
    transform: Callable[[float], float] | None = None
    labels: bool = False  # samples are labelled predictions (and need minLabeled)

    def estimate(self, judge: Judging, s: float, n: float, alpha: float, fixed: bool = False) -> Est:
        """The metric's value and confidence sequence from its counts (``fixed``: the
        one-look likelihood interval instead, for leaning)."""
        if n <= 0:
            return Est(math.nan, 0.0, 1.0, alpha)
        prior = judge.general_prior if self.general_prior else judge.small_rate_prior

        def interval(events: float) -> tuple[float, float]:
            if fixed:
                return stats.likelihood_interval(events, n, alpha)
            return stats.rate_cs(events, n, alpha, prior)

        if self.complement:
            lo, hi = interval(n - s)
            return Est(s / n, 1.0 - hi, 1.0 - lo, alpha)
        lo, hi = interval(s)
        if self.transform is not None:
            f = self.transform
            return Est(f(s / n), f(lo), f(hi), alpha)
        return Est(s / n, lo, hi, alpha)


@dataclass(frozen=True)
class _Plan:
    """Which sequences a rate check's bounds need, and the two-arm tests' profiles."""

    bounds: list[tuple[str, float]]
    two_arm: bool
    needs_stable: bool
    has_diff: bool
    has_ratio: bool
    objects: int  # confidence sequences the budget is split over
    up: stats.RatioProfile | None = None
    down: stats.RatioProfile | None = None


def evaluate_rate(
    kind: RateKind, judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float
) -> CheckResult:
    window = ev.window
    stable_vc = stable_counts(window, ctx)
    s_c, n_c = kind.counts(check, window.candidate)
    s_s, n_s = kind.counts(check, stable_vc)
    prepared = kind.prepare(check, ev, ctx)
    if isinstance(prepared, CheckResult):
        return prepared
    subject, notes = prepared
    if n_c <= 0:
        return inconclusive(check, f"no data for the candidate: {kind.missing(check)} in this window")
    bounds = bounds_of(check)
    if not bounds:
        return inconclusive(check, "no bound to judge", samples=n_c, enough=True)
    stable_ok = n_s > 0
    disp = _dispersion(kind, check, ev, ctx)
    aside = _set_aside(disp, ev, ctx)
    plan = _plan(judge, kind, check, ev, ctx, bounds, stable_ok, disp.split, aside)
    point = div(s_c / n_c, s_s / n_s) if stable_ok else math.nan
    # Absolute bounds (max, min) judge the candidate's own counts as they are: a candidate
    # beyond its SLO is rolled back at once, burst or not. Relative bounds compare the two
    # versions: there, bursts are set aside and overdispersed counts discounted (rates kept).
    raw = _Case(judge, kind, plan, subject.unit, s_c, n_c, s_s, n_s, point)
    s_kept = min(s_c + sum(aside), n_c) if kind.complement else max(s_c - sum(aside), 0.0)
    f = 1.0 / disp.own
    discounted = _Case(judge, kind, plan, subject.unit, s_kept * f, n_c * f, s_s * f, n_s * f, point)
    # Speed only: with no discount and nothing set aside (most ticks) both are the same numbers.
    same = (s_kept * f, n_c * f, s_s * f, n_s * f) == (s_c, n_c, s_s, n_s)

    def judged_at(level: float, fixed: bool = False) -> tuple[Est, Est | None, list[Outcome]]:
        cand, stable, as_is = raw.judged_at(level, fixed)
        if same:
            return cand, stable, as_is
        _, stable, compared = discounted.judged_at(level, fixed)
        return cand, stable, [c if c.relative else a for a, c in zip(as_is, compared, strict=True)]

    cand, stable, outcomes = judged_at(alpha)
    p_lean = judge.lean_threshold(ctx, ev.current)
    outcomes = judge.lean(outcomes, lambda a: judged_at(a, True)[2], p_lean)
    if plan.two_arm and p_lean is not None and stable is not None:
        outcomes = [
            o
            if o.failed or not o.relative
            else with_leaning(o, beyond_probability(judge, o, plan.up, plan.down, stable) >= p_lean)
            for o in outcomes
        ]
    if kind.labels:
        samples_c, samples_s = labelled(window.candidate), labelled(stable_vc)
    else:
        samples_c, samples_s = n_c, n_s
    if not stable_ok and (plan.has_diff or plan.has_ratio):
        notes.append("no data for stable in this window")
    need = min_samples(check, ctx, kind.labels)
    note = disp.note()
    if note is not None:
        notes.append(note)
    result = combine(check, subject, outcomes, cand, stable, samples_c, samples_s, need, notes)
    return replace(result, tally=disp.tally)


def _set_aside(disp: dispersion.Dispersion, ev: Evidence, ctx: JudgeContext) -> tuple[float, ...]:
    """Candidate events set aside as bursts, per stratum of the evidence."""
    if len(ev.strata) == ctx.step_index + 1:
        return tuple(disp.set_aside(k) for k in range(len(ev.strata)))
    return (*(0.0,) * (len(ev.strata) - 1), disp.set_aside(ctx.step_index))


def _dispersion(kind: RateKind, check: Check, ev: Evidence, ctx: JudgeContext) -> dispersion.Dispersion:
    """How overdispersed this check's counts are (see checks/dispersion)."""
    before = ctx.tally_of(check.name)
    if not ctx.ticks or not concurrent(ev.current, ctx):  # one window, or nothing to split
        return dispersion.unchanged(check.name, ctx.step_index, before)

    def tested(w: Observation) -> dispersion.Counts:
        s_c, n_c = kind.counts(check, w.candidate)
        s_s, n_s = kind.counts(check, w.stable)
        if kind.complement:
            return n_c - s_c, n_c, n_s - s_s, n_s
        return s_c, n_c, s_s, n_s

    finished = None
    if before is not None and before.step != ctx.step_index and len(ev.strata) >= 2:
        finished = tested(ev.strata[-2])  # the step the tally was in has ended
    clock = dispersion.Clock(ev.current.at, ev.current.since, ctx.burst_duration_s)
    return dispersion.measure(check.name, ctx.step_index, tested(ev.current), before, clock, finished)


def _plan(
    judge: Judging,
    kind: RateKind,
    check: Check,
    ev: Evidence,
    ctx: JudgeContext,
    bounds: list[tuple[str, float]],
    stable_ok: bool,
    split_dispersion: float = 1.0,
    aside: Sequence[float] = (),
) -> _Plan:
    """Relative bounds of a proportion with a concurrent stable arm: the two-arm test over
    the rollout's steps, one profile per direction. A difference is then bounded twice, by
    the arms' own sequences and through the ratio, and the two intervals intersected: each
    is better in its own regime (the ratio when the candidate's share is small and stable's
    rate is precise; the arms' sequences when stable's rate is rare and uncertain)."""
    kinds = {k for k, _ in bounds}
    has_abs = bool(kinds & {"max", "min"})
    has_diff = bool(kinds & {"maxIncrease", "maxDecrease"})
    has_ratio = "maxIncreaseRatio" in kinds
    two_arm = (has_diff or has_ratio) and stable_ok and kind.transform is None and concurrent(ev.current, ctx)
    if not two_arm:
        needs_stable = stable_ok and (has_diff or has_ratio)
        objects = int(has_abs or needs_stable) + int(needs_stable)
        return _Plan(bounds, False, needs_stable, has_diff, has_ratio, objects)
    up = down = None
    if has_ratio or "maxIncrease" in kinds:
        r0 = next((1.0 + v for k, v in bounds if k == "maxIncreaseRatio"), 1.0)
        up = ratio_profile(judge, kind, check, ev, r0, discount=split_dispersion, aside=aside)
    if "maxDecrease" in kinds:
        down = ratio_profile(
            judge, kind, check, ev, 1.0, complement=True, discount=split_dispersion, aside=aside
        )
    objects = int(has_abs or has_diff) + int(has_diff) + int(up is not None) + int(down is not None)
    return _Plan(bounds, True, has_diff, has_diff, has_ratio, objects, up, down)


@dataclass(frozen=True)
class _Case:
    """One rate check's counts and plan, judged at any level."""

    judge: Judging
    kind: RateKind
    plan: _Plan
    unit: str
    s_c: float
    n_c: float
    s_s: float
    n_s: float
    point: float  # candidate's rate / stable's

    def judged_at(self, level: float, fixed: bool = False) -> tuple[Est, Est | None, list[Outcome]]:
        """Every bound judged with confidence sequences whose errors sum to ``level``
        (``fixed``: one-look likelihood intervals at ``level`` each, for leaning)."""
        a = level if fixed else level / max(self.plan.objects, 1)
        cand = self.kind.estimate(self.judge, self.s_c, self.n_c, a, fixed)
        stable = self.kind.estimate(self.judge, self.s_s, self.n_s, a, fixed) if self.n_s > 0 else None
        plan = self.plan
        if not plan.two_arm:
            diff = difference(cand, stable, a) if stable is not None and plan.needs_stable else None
            ratio = ratio_from_arms(cand, stable, a) if plan.has_ratio and stable is not None else None
            return cand, stable, [judge_bound(k, v, cand, diff, ratio, self.unit) for k, v in plan.bounds]
        return cand, stable, [self._two_arm_bound(k, v, cand, stable, a, fixed) for k, v in plan.bounds]

    def _two_arm_bound(
        self, kind: str, limit: float, cand: Est, stable: Est | None, a: float, fixed: bool
    ) -> Outcome:
        up, down = self.plan.up, self.plan.down
        diff = ratio = None
        if kind == "maxIncreaseRatio" and up is not None:
            lo, hi = up.one_look(a) if fixed else up.cs(a)
            # Open ends on the grid: a lower end at the limit already rejects it.
            ratio = Est(self.point, lo, hi, a, exclusive=True)
        elif kind in ("maxIncrease", "maxDecrease") and stable is not None:
            arms = difference(cand, stable, a)
            two = two_arm_diff(kind, up if kind == "maxIncrease" else down, cand, stable, a, fixed)
            diff = arms if two is None else intersect(arms, two)
        return judge_bound(kind, limit, cand, diff, ratio, self.unit)


def ratio_profile(
    judge: Judging,
    kind: RateKind,
    check: Check,
    ev: Evidence,
    r0: float,
    complement: bool = False,
    discount: float = 1.0,
    aside: Sequence[float] = (),
) -> stats.RatioProfile:
    """The two-arm test of a rate check over the evidence's strata: of its events, or
    with ``complement`` of the trials that are not events (wrong predictions for
    accuracy, where lower is worse); events divided by ``discount`` (overdispersion), the
    candidate's without those set ``aside`` as bursts (per stratum; the tested events)."""
    e_c, e_s, shares = [], [], []
    for k, w in enumerate(ev.strata):
        s_c, n_c = kind.counts(check, w.candidate)
        s_s, n_s = kind.counts(check, w.stable)
        if n_c > 0 and n_s > 0:
            burst = aside[k] if k < len(aside) and complement == kind.complement else 0.0
            e_c.append(max((n_c - s_c if complement else s_c) - burst, 0.0) / discount)
            e_s.append((n_s - s_s if complement else s_s) / discount)
            shares.append(n_c / (n_c + n_s))
    return stats.ratio_profile(e_c, e_s, shares, r0, scale=judge.ratio_scale)


def two_arm_diff(
    kind: str,
    profile: stats.RatioProfile | None,
    cand: Est,
    stable: Est,
    alpha: float,
    fixed: bool,
) -> Est | None:
    """A difference bound from the two-arm ratio test and stable's own sequence.

    "candidate - stable <= d" on a proportion is "R <= 1 + d / p_s" for the ratio R of
    the rates, and R's sequence is far tighter than the candidate's own. Where stable's
    sequence covers p_s, its lower end L gives a null at least as large, so rejecting
    "R <= 1 + d / L" rejects the bound: the difference's lower end is (R_lo - 1) * L
    (at most alpha for the ratio plus alpha for stable's sequence). ``maxDecrease``
    works on the complement (errors of accuracy: wrong predictions) and flips the sign.
    """
    if profile is None:
        return None
    lo_r, hi_r = profile.one_look(alpha) if fixed else profile.cs(alpha)
    # Stable's rate of the tested events (Ests are of the rate's own events).
    s_lo, s_hi = stable.lo, stable.hi
    if kind == "maxDecrease":
        s_lo, s_hi = 1.0 - stable.hi, 1.0 - stable.lo
    lo = (lo_r - 1.0) * (s_lo if lo_r >= 1.0 else s_hi)
    hi = INF if math.isinf(hi_r) else (hi_r - 1.0) * (s_hi if hi_r >= 1.0 else s_lo)
    if kind == "maxDecrease":
        lo, hi = -hi, -lo
    return Est(cand.est - stable.est, lo, hi, alpha, exclusive=True)


def beyond_probability(
    judge: Judging,
    outcome: Outcome,
    up: stats.RatioProfile | None,
    down: stats.RatioProfile | None,
    stable: Est,
) -> float:
    """Posterior probability that a relative bound is broken (for leaning): the ratio
    beyond its limit, or beyond ``1 + d / p_s`` at stable's estimated rate."""
    if outcome.kind == "maxIncreaseRatio":
        return up.prob_above_ratio(outcome.limit, judge.lean_prior_sd) if up is not None else 0.0
    profile = up if outcome.kind == "maxIncrease" else down
    rate = 1.0 - stable.est if outcome.kind == "maxDecrease" else stable.est
    if profile is None or not rate > 0.0:
        return 0.0
    d = abs(outcome.limit)
    return profile.prob_above_ratio(1.0 + d / rate, judge.lean_prior_sd)


# -- rates ---------------------------------------------------------------------------
