"""The anytime-valid judge: a verdict per check from per-version counts (see docs/statistics.md).

Pure: no I/O, no clock. The engine calls :meth:`AnytimeJudge.evaluate` at every analysis
tick with the step's cumulative window and, in a canary, the completed steps' windows
(``ctx.earlier_windows``). The judge adds them up, so evidence accumulates over the whole
rollout instead of restarting at every step: each arm's rate sequence runs on its
cumulative counts, and the two-arm tests multiply per-step likelihood ratios under one
common effect (each step with its own traffic share). Every decision rests on confidence
sequences / test supermartingales, so looking at every tick does not inflate the
false-fail rate.

Budget: the engine hands each judged window ``ctx.alpha`` (its budget divided by the
number of windows). When the evidence spans the whole canary, it is one sequence for all
windows, so it may spend all of them at once: ``ctx.alpha`` times the number of judged
windows (every step but the last, 100%). That is split evenly across the checks that use
statistics (Bonferroni), and within a check evenly across the confidence sequences its
bounds need (the candidate's, stable's, the two-arm ratio test). A bound fails only when a
sequence proves it broken, so the chance that any check ever fails a candidate within
tolerance during the rollout stays within ``1 - analysis.confidence``.

The data extraction (:func:`rate_counts`, :func:`latency_histograms`, ...) is public so
that other judges (the benchmark's Flagger- and Kayenta-style rules) read the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from mesh_canary.checks import REGISTRY
from mesh_canary.checks.bounds import Est, Outcome, inconclusive, with_leaning
from mesh_canary.checks.drift import drift_counts
from mesh_canary.checks.evidence import (
    Evidence,
    concurrent,
    gather_evidence,
    labelled,
    latency_histograms,
    scale_counts,
    stable_counts,
)
from mesh_canary.core import stats
from mesh_canary.core.frozen import replace
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

__all__ = [
    "MAX_JUDGED_COUNT",
    "AnytimeJudge",
    "Est",
    "Evidence",
    "concurrent",
    "could_not_judge",
    "drift_counts",
    "gather_evidence",
    "labelled",
    "latency_histograms",
    "rate_counts",
    "stable_counts",
]

# Before the promoting step, leaning towards failure = beyond tolerance with probability
# 1 - 0.3/2 = 0.85 (about a standard error beyond; see AnytimeJudge). The point estimate
# alone leans on noise at small counts and held healthy candidates to a timeout.
DEFAULT_LEAN_ALPHA = 0.3
# In the last step (the one whose success promotes), evidence has accumulated over the
# whole rollout and a healthy candidate's estimate sits well inside tolerance, while a
# regressed one that slipped through the early steps has its last chance to be held: so
# there a check leans as soon as it is beyond tolerance with this probability (below 1/2:
# unless its estimate is clearly within). Chosen by the benchmark (docs/benchmarks.md).
DEFAULT_FINAL_LEAN_PROBABILITY = 0.35
# Relative bounds of proportions lean on a posterior probability instead of a one-look
# interval: one error among a few hundred requests against stable's handful is "16x
# stable" to a likelihood interval, and held healthy candidates at low traffic to their
# step's deadline. A normal prior on log R with this standard deviation (half the prior
# mass within 0.5x..2x) keeps such noise near "no difference" and lets a few dozen events
# speak; 0.5 also discounted real 5x regressions seen through unlucky data.
DEFAULT_LEAN_PRIOR_SD = 1.0
# Holding a step is worth it only while more traffic can settle the question, and a step
# still held at its maxStepDuration is rolled back: for a healthy candidate, that is a false
# rollback like any other. So the evidence needed to keep holding rises with the share of
# the step's maxStepDuration that has passed (quadratically: holding is cheap early, while a
# real regression at realistic traffic gets proven), until, at the deadline, only a
# candidate beyond tolerance with probability 1 - (the window's false-rollback budget) is
# still held: the timeout's share of the budget is the window's own, whatever the step's
# duration and traffic (no constant tuned to a default duration).
DEFAULT_HOLD_RAMP_SHARE = 1.0


def rate_counts(check: Check, counts: VersionCounts) -> tuple[float, float]:
    """``(events, trials)`` of the rate a check judges, for one version (its kind says how)."""
    kind = REGISTRY.get(check.metric)
    if kind is None or kind.rate is None:
        raise ValueError(f"{check.metric} is not a rate metric")
    return kind.rate(check, counts)


def could_not_judge(check: Check, why: str) -> CheckResult:
    """The verdict when a check cannot be judged: fail (roll back), saying why."""
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=Verdict.FAIL,
        reason=f"could not judge {check.name}: {why}",
    )


def _count_fields(check: Check, counts: VersionCounts) -> list[tuple[str, float]]:
    """The counts a check reads from one version, each with its name for a reason."""
    kind = REGISTRY.get(check.metric)
    return kind.counts(check, counts) if kind is not None else []


def _uses_statistics(check: Check, ctx: JudgeContext) -> bool:
    kind = REGISTRY.get(check.metric)
    return kind is None or kind.uses_statistics(ctx)


def _impossible_count(check: Check, window: Observation) -> str | None:
    """A count no real traffic has (NaN, an infinity) among those the check reads."""
    for role, counts in (("candidate", window.candidate), ("stable", window.stable)):
        for name, value in _count_fields(check, counts):
            x = float(value)
            if x != x:
                return f"a count of {name} for {role} that is not a number"
            if math.isinf(x):
                return f"an infinite count of {name} for {role}"
    return None


def _all_finite(counts: VersionCounts, seen: dict[int, bool]) -> bool:
    """Is every count of one version a finite number (then no check reads an impossible one:
    each reads some of them as they are)? Speed only; remembered in ``seen`` by identity for
    the checks of one evaluation."""
    known = seen.get(id(counts))
    if known is None:
        values = [counts.requests, counts.errors, *counts.confusion.values(), *counts.predictions.values()]
        values += counts.custom.values()
        if counts.latency_ms is not None:
            values += counts.latency_ms.counts
        for h in counts.features.values():
            values += h.counts
        try:
            known = all(map(math.isfinite, values))
        except TypeError:  # not a number at all: the slow path says which
            known = False
        seen[id(counts)] = known
    return known


# Counts beyond this are scaled down, all by one factor (rates, ratios and shares are kept;
# only the evidence shrinks, which is conservative): the statistics lose precision, then
# overflow, far above it (1e18 requests: "math domain error").
MAX_JUDGED_COUNT = 1e12


def _largest_count(counts: VersionCounts) -> float:
    values = [counts.requests, counts.errors, *counts.confusion.values(), *counts.predictions.values()]
    if counts.latency_ms is not None:
        values += counts.latency_ms.counts
    for h in counts.features.values():
        values += h.counts
    return max(map(abs, filter(math.isfinite, values)), default=0.0)  # no generator: a hot path


def _within_judged_range(window: Observation, ctx: JudgeContext) -> tuple[Observation, JudgeContext]:
    """The window and the carried evidence with counts scaled into the judged range."""
    earlier = [w for _, w in ctx.earlier_windows]
    base = [ctx.stable_baseline] if ctx.stable_baseline is not None else []
    every = [window, *earlier, *base]
    top = max(_largest_count(vc) for w in every for vc in (w.stable, w.candidate))
    if top <= MAX_JUDGED_COUNT:
        return window, ctx
    f = MAX_JUDGED_COUNT / top

    def scale(w: Observation) -> Observation:
        return replace(w, stable=scale_counts(w.stable, f), candidate=scale_counts(w.candidate, f))

    ctx = replace(
        ctx,
        earlier_windows=tuple((share, scale(w)) for share, w in ctx.earlier_windows),
        stable_baseline=scale(ctx.stable_baseline) if ctx.stable_baseline is not None else None,
    )
    return scale(window), ctx


# ---------------------------------------------------------------------------------------
# The judge


class AnytimeJudge:
    """Verdicts from confidence sequences; see the module docstring and docs/statistics.md."""

    def __init__(
        self,
        small_rate_prior: stats.BetaPrior = stats.SMALL_RATE_PRIOR,
        general_prior: stats.BetaPrior = stats.GENERAL_PRIOR,
        lean_alpha: float | None = DEFAULT_LEAN_ALPHA,
        final_lean_probability: float = DEFAULT_FINAL_LEAN_PROBABILITY,
        ratio_scale: float = stats.RATIO_PRIOR_SCALE,
        lean_prior_sd: float = DEFAULT_LEAN_PRIOR_SD,
        hold_ramp_share: float = DEFAULT_HOLD_RAMP_SHARE,
        accumulate: bool = True,
    ) -> None:
        """Knobs of holding versus advancing (never of failing) and of the two-arm tests.

        ``lean_alpha``: before the promoting step, a check leans towards failure (holds the
        step) when it is beyond tolerance with probability 1 - lean_alpha/2: on one-look
        likelihood-ratio intervals at this two-sided level (not anytime-valid) for absolute
        bounds, on the posterior under ``lean_prior_sd`` for relative bounds of rates; None:
        whenever the point estimate is beyond tolerance. ``final_lean_probability``: the
        probability that holds the step whose success promotes (the last before 100%).
        ``hold_ramp_share``: the longer a step has run, the more probable "beyond tolerance"
        must be to keep holding it, rising quadratically to 1 - ``ctx.alpha`` over this
        share of the step's maxStepDuration (0: no ramp). ``ratio_scale``: the
        prior scale of the two-arm tests' grid mixture (:data:`stats.RATIO_PRIOR_SCALE`;
        speed only, never validity). ``accumulate=False`` judges every step on its own
        window at ``ctx.alpha``, as before evidence was carried across steps (for comparison).
        """
        self.small_rate_prior = small_rate_prior
        self.general_prior = general_prior
        self.lean_alpha = lean_alpha
        self.final_lean_probability = final_lean_probability
        self.ratio_scale = ratio_scale
        self.lean_prior_sd = lean_prior_sd
        self.hold_ramp_share = hold_ramp_share
        self.accumulate = accumulate

    @property
    def carries_evidence(self) -> bool:
        """Are canary steps judged on the evidence of the earlier steps too? Then the engine
        also judges the last step's own window (see engine.tick)."""
        return self.accumulate

    def lean_threshold(
        self, ctx: JudgeContext, window: Observation, level: float | None = None
    ) -> float | None:
        """The probability of being beyond tolerance at which a check leans in this window
        (None: on the point estimate alone, the judge built with ``lean_alpha=None``).

        ``final_lean_probability`` in the canary step whose success promotes, else that of
        ``lean_alpha`` (or of ``level``), raised towards 1 - ``ctx.alpha`` as the step
        nears its deadline (``hold_ramp_share`` of ``ctx.step_deadline_s``).
        """
        if level is None:
            if self.lean_alpha is None:
                return None
            final = (
                ctx.step_count >= 2
                and ctx.step_index == ctx.step_count - 2
                and not ctx.mirrored
                and not ctx.own_window
            )
            p0 = self.final_lean_probability if final else self.lean_probability(self.lean_alpha)
        else:
            p0 = self.lean_probability(level)
        ramp = self.hold_ramp_share * ctx.step_deadline_s
        if not 0.0 < ramp < math.inf:
            return p0
        held = min(max(window.at - window.since, 0.0) / ramp, 1.0)
        release = 1.0 - min(max(ctx.alpha, 1e-12), 0.5)
        # Quadratic: barely stricter in a step's first minutes, where holding is cheap and a
        # regression at realistic traffic gets proven; strict near the deadline.
        return p0 + max(release - p0, 0.0) * held * held

    @staticmethod
    def lean_probability(level: float | None) -> float:
        """The posterior probability of being beyond tolerance equivalent to a one-look
        level (two-sided ``level``: 1 - level/2; None: 1/2, the point estimate)."""
        return 0.5 if level is None else 1.0 - level / 2.0

    def lean(
        self, outcomes: list[Outcome], judged_at: Callable[[float], list[Outcome]], p: float | None
    ) -> list[Outcome]:
        """Re-judge ``leaning`` with one-look likelihood intervals for threshold ``p``: at
        ``p > 1/2`` a bound leans only where its point estimate is beyond tolerance and so is
        the one-look interval at level ``2(1 - p)``; at ``p < 1/2`` it leans unless the
        one-look interval at level ``2p`` lies within tolerance; at 1/2 (or None) on the
        point estimate."""
        if p is None or p == 0.5:
            return outcomes
        if p > 0.5:
            if not any(o.leaning and not o.failed for o in outcomes):
                return outcomes
            lenient = judged_at(2.0 * (1.0 - p))
            return [
                o if o.failed or not o.leaning else with_leaning(o, easy.failed)
                for o, easy in zip(outcomes, lenient, strict=True)
            ]
        strict = judged_at(max(2.0 * p, 1e-12))
        return [
            o if o.failed else with_leaning(o, o.leaning or not easy.passed)
            for o, easy in zip(outcomes, strict, strict=True)
        ]

    def evidence(self, window: Observation, ctx: JudgeContext) -> Evidence:
        """What this judge rests its verdicts on (see :func:`gather_evidence`)."""
        if not self.accumulate:
            return Evidence(window, window, (window,), 1)
        return gather_evidence(window, ctx)

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        if window.problem:
            return [inconclusive(c, f"no data: {window.problem}") for c in checks]
        window, ctx = _within_judged_range(window, ctx)
        ev = self.evidence(window, ctx)
        spending = sum(1 for c in checks if _uses_statistics(c, ctx))
        alpha = ctx.alpha if ctx.alpha == ctx.alpha else 0.0
        alpha_check = min(max(alpha * ev.windows, 1e-15), 0.5) / max(spending, 1)
        finite: dict[int, bool] = {}  # per version's counts, shared by the checks (speed only)
        return [self._evaluate_safely(c, ev, ctx, alpha_check, finite) for c in checks]

    def evaluate_check(
        self, check: Check, window: Observation, ctx: JudgeContext, alpha: float
    ) -> CheckResult:
        """One check with its own false-fail budget ``alpha`` (for the whole evidence)."""
        window, ctx = _within_judged_range(window, ctx)
        return self._evaluate_safely(check, self.evidence(window, ctx), ctx, alpha)

    def _evaluate_safely(
        self,
        check: Check,
        ev: Evidence,
        ctx: JudgeContext,
        alpha: float,
        finite: dict[int, bool] | None = None,
    ) -> CheckResult:
        """A failure to judge is a failed check (never a pass, never a crash that leaves
        the traffic where it is): impossible counts, or any error in the statistics."""
        finite = {} if finite is None else finite
        for w in (*ev.strata, *([ctx.stable_baseline] if ctx.stable_baseline is not None else [])):
            if _all_finite(w.candidate, finite) and _all_finite(w.stable, finite):
                continue  # no count is impossible, so none of those this check reads
            bad = _impossible_count(check, w)
            if bad is not None:
                return could_not_judge(check, f"the metrics source returned {bad}")
        try:
            return self._evaluate(check, ev, ctx, alpha)
        except Exception as e:  # pure code: catching is fine, and the rollback says why
            return could_not_judge(check, f"{type(e).__name__}: {e}")

    def _evaluate(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        kind = REGISTRY.get(check.metric)
        if kind is None:
            return inconclusive(check, f"unknown metric {check.metric!r}")
        return kind.evaluate(self, check, ev, ctx, alpha)
