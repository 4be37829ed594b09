"""Other decision rules, for the decision-quality benchmark (bench/decision_quality.py).

Each implements the engine's :class:`~mesh_canary.core.verdicts.Judge` protocol, so it runs
through exactly the same simulate machinery, schedule and traffic as
:class:`~mesh_canary.core.judge.AnytimeJudge`:

- :class:`FlaggerJudge`: the candidate alone against fixed limits each interval (success
  rate >= 99%, p99 <= 500 ms: Flagger's builtin metrics at its documented defaults), a
  failed interval holds the weight, rollback after ``threshold`` (5) failed intervals;
- :class:`KayentaJudge`: Kayenta's NetflixACAJudge: a Mann-Whitney U test (Hodges-Lehmann
  confidence interval at 98%) of the candidate's per-interval metric values against
  stable's, with its effect-size rule (the interval must clear 25% of the estimate),
  re-run every interval on all intervals since the rollout began;
- :class:`OracleSPRT`: Wald's sequential probability ratio test that knows both versions'
  true behaviour (and when a change begins): the fewest samples any valid test needs on
  average, the limit the others are measured against.

Unlike AnytimeJudge these keep state between ticks (per-interval values, a failed-interval
counter), so use one instance per rollout. Not part of the controller: only the benchmark
and tests import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from mesh_canary.core import stats
from mesh_canary.core.judge import gather_evidence, rate_counts
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

__all__ = [
    "FlaggerJudge",
    "KayentaJudge",
    "OracleSPRT",
    "hodges_lehmann_interval",
]


class _Intervals:
    """Rollout-cumulative counts at every tick; per-interval counts are their differences."""

    def __init__(self) -> None:
        self._last: Observation | None = None

    def next(self, window: Observation, ctx: JudgeContext) -> tuple[Observation, Observation]:
        """``(since the previous tick, since the rollout began)`` for both versions."""
        total = gather_evidence(window, ctx).window
        last = self._last
        self._last = total
        if last is None:
            return total, total
        return (
            Observation(
                last.at, total.at, total.stable.minus(last.stable), total.candidate.minus(last.candidate)
            ),
            total,
        )


def _result(
    check: Check, verdict: Verdict, reason: str, estimate: float | None = None, leaning: bool = False
) -> CheckResult:
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=verdict,
        reason=reason,
        estimate=estimate if estimate is None or math.isfinite(estimate) else None,
        enough_data=True,
        leaning_fail=leaning,
    )


def _p99(h: Histogram | None, q: float) -> float:
    if h is None or not h.counts or h.total <= 0:
        return math.nan
    return stats.interpolate_quantile(h.bounds, h.counts, q)


# ---------------------------------------------------------------------------------------
# Flagger


@dataclass
class FlaggerJudge:
    """Flagger's builtin checks on the candidate alone, every analysis interval.

    ``request-success-rate`` (non-5xx share) must be at least ``min_success_rate`` and
    ``request-duration`` (the interval's p99, interpolated from histogram buckets as
    Prometheus' ``histogram_quantile`` does) at most ``max_p99_ms``. An interval where
    either fails (or has no requests) holds the weight and counts towards ``threshold``;
    the canary rolls back when the count reaches it. Flagger judges the last
    ``analysis.interval`` (1m by default); run it with a policy whose interval is 1m.
    Checks other than errorRate and a latency quantile are not Flagger's builtin metrics
    and pass.
    """

    min_success_rate: float = 0.99
    max_p99_ms: float = 500.0
    threshold: int = 5
    failed: int = 0
    _intervals: _Intervals = field(default_factory=_Intervals, repr=False)

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        interval, _ = self._intervals.next(window, ctx)
        cand = interval.candidate
        outcomes: list[tuple[Check, bool | None, str, float]] = []
        for check in checks:
            if check.metric == "errorRate":
                n = cand.requests
                value = 1.0 - cand.errors / n if n > 0 else math.nan
                ok = value >= self.min_success_rate if n > 0 else False
                outcomes.append(
                    (
                        check,
                        ok,
                        f"success rate {100 * value:.2f}% (min {100 * self.min_success_rate:g}%)",
                        value,
                    )
                )
            elif check.metric == "latency" and check.slower_than_ms is None:
                p99 = _p99(cand.latency_ms, 0.99)
                ok = p99 <= self.max_p99_ms if p99 == p99 else False
                outcomes.append((check, ok, f"p99 {p99:.0f}ms (max {self.max_p99_ms:g}ms)", p99))
            else:
                outcomes.append((check, None, "not one of Flagger's builtin metrics", math.nan))
        if any(ok is False for _, ok, _, _ in outcomes):
            self.failed += 1
        results = []
        for check, passed, text, value in outcomes:
            if passed is None or passed:
                results.append(_result(check, Verdict.PASS, text, value))
            elif self.failed >= self.threshold:
                results.append(_result(check, Verdict.FAIL, f"{text}; failed checks {self.failed}", value))
            else:
                results.append(
                    _result(check, Verdict.INCONCLUSIVE, f"{text}; failed checks {self.failed}", value, True)
                )
        return results


# ---------------------------------------------------------------------------------------
# Kayenta


def hodges_lehmann_interval(
    experiment: Sequence[float], control: Sequence[float], confidence: float
) -> tuple[float, float, float]:
    """``(lower, upper, estimate)`` of the shift experiment - control: the Mann-Whitney /
    Wilcoxon rank-sum confidence interval (normal approximation, as R's ``wilcox.test``
    with ``conf.int`` for larger samples) around the Hodges-Lehmann estimate (the median of
    all pairwise differences). Infinite ends when the samples are too small."""
    x = np.asarray(experiment, dtype=np.float64)
    y = np.asarray(control, dtype=np.float64)
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        return -math.inf, math.inf, math.nan
    d = np.sort(np.subtract.outer(x, y).ravel())
    total = m * n
    estimate = float(np.median(d))
    z = float(ndtri(1.0 - (1.0 - confidence) / 2.0))
    c = math.floor(total / 2.0 - z * math.sqrt(m * n * (m + n + 1) / 12.0))
    if c < 1:
        return -math.inf, math.inf, estimate
    return float(d[c - 1]), float(d[total - c]), estimate


@dataclass
class KayentaJudge:
    """Kayenta's Mann-Whitney classifier on per-interval values, re-run every interval.

    Each tick adds one value per metric and version (that interval's error rate, p99,
    share slower than the bound, accuracy, share of each predicted class); each metric is
    classified on all values since the rollout began: ``High`` when the interval for
    (candidate - stable) at ``confidence`` lies above ``fraction`` of |estimate|, ``Low``
    when below minus that. A metric that is High (worse, for errors and latency), Low (for
    accuracy) or either (for class shares) fails the canary: with a handful of metrics
    one failure puts Kayenta's score below its marginal threshold. Kayenta's IQR outlier
    filter is left out: with mostly zero-error intervals it would drop every interval that
    had an error, which would only blind it.
    """

    confidence: float = 0.98
    fraction: float = 0.25
    min_intervals: int = 3
    _intervals: _Intervals = field(default_factory=_Intervals, repr=False)
    _values: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict, repr=False)

    def _metrics(self, check: Check, counts: VersionCounts) -> dict[str, float]:
        m = check.metric
        if m in ("errorRate", "accuracy") or (m == "latency" and check.slower_than_ms is not None):
            s, n = rate_counts(check, counts)
            return {check.name: s / n if n > 0 else math.nan}
        if m == "latency":
            q = check.quantile if check.quantile is not None else 0.99
            return {check.name: _p99(counts.latency_ms, q)}
        if m == "predictionDrift":
            total = sum(counts.predictions.values())
            return {
                f"{check.name}:{k}": (v / total if total > 0 else math.nan)
                for k, v in sorted(counts.predictions.items())
            }
        return {}

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        interval, _ = self._intervals.next(window, ctx)
        results = []
        for check in checks:
            vc, vs = self._metrics(check, interval.candidate), self._metrics(check, interval.stable)
            if not vc:
                results.append(_result(check, Verdict.PASS, "not a metric this rule compares"))
                continue
            direction = {"accuracy": "decrease", "predictionDrift": "either"}.get(check.metric, "increase")
            worst: tuple[str, float] | None = None
            for key, x in vc.items():
                xs, ys = self._values.setdefault(key, ([], []))
                y = vs.get(key, math.nan)
                if x == x:
                    xs.append(x)
                if y == y:
                    ys.append(y)
                if len(xs) < self.min_intervals or len(ys) < self.min_intervals:
                    continue
                lo, hi, est = hodges_lehmann_interval(xs, ys, self.confidence)
                critical = self.fraction * abs(est)
                high = lo > critical and direction in ("increase", "either")
                low = hi < -critical and direction in ("decrease", "either")
                if high or low:
                    worst = (key, est)
                    break
            if worst is not None:
                results.append(
                    _result(
                        check,
                        Verdict.FAIL,
                        f"{worst[0]} classified {'High' if worst[1] > 0 else 'Low'} "
                        f"(Mann-Whitney at {100 * self.confidence:g}%, shift {worst[1]:.4g})",
                        worst[1],
                    )
                )
            else:
                results.append(_result(check, Verdict.PASS, "classified Pass"))
        return results


# ---------------------------------------------------------------------------------------
# Oracle SPRT


ORACLE_METRICS = {
    "errors": "errorRate",
    "latency": "latency",
    "accuracy": "accuracy",
    "predictions": "predictionDrift",
}


@dataclass
class OracleSPRT:
    """Wald's SPRT of the candidate's own outcomes, knowing both hypotheses exactly.

    ``kind`` says what a candidate outcome is: ``errors`` (failed or not, per request),
    ``latency`` (its histogram bucket, per request), ``accuracy`` (wrong or right, per
    labelled prediction) or ``predictions`` (the predicted class). ``null`` and ``alt`` are
    its category probabilities under "as good as stable" and under the true regression
    (for ``errors`` and ``accuracy``: ``(p_bad, 1 - p_bad)``). Only outcomes after
    ``onset_s`` count (the oracle knows when a change begins). Rolls back when the log
    likelihood ratio reaches ``log((1 - beta) / alpha)``; accepts the null (passes for
    good) at ``log(beta / (1 - alpha))``; in between it holds the step while the ratio
    favours the regression (as mesh-canary's judge holds on leaning evidence), for at most
    ``hold_s`` per step, and lets the schedule proceed otherwise.
    """

    kind: str
    null: tuple[float, ...]
    alt: tuple[float, ...]
    alpha: float = 0.01
    beta: float = 0.05
    onset_s: float = 0.0
    hold_s: float = 600.0
    llr: float = 0.0
    accepted: bool = False
    _base: Observation | None = field(default=None, repr=False)
    _intervals: _Intervals = field(default_factory=_Intervals, repr=False)

    def _outcomes(self, counts: VersionCounts) -> list[float]:
        if self.kind == "errors":
            return [counts.errors, counts.requests - counts.errors]
        if self.kind == "latency":
            h = counts.latency_ms
            return list(h.per_bucket()) if h is not None else [0.0] * len(self.null)
        if self.kind == "accuracy":
            return [counts.labeled - counts.correct, counts.correct]
        return [v for _, v in sorted(counts.predictions.items())]

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        _, total = self._intervals.next(window, ctx)
        if self.onset_s > 0 and total.at <= self.onset_s + 1e-9:
            self._base = total  # the counts before the change do not count
        if not self.accepted:
            since = total.candidate.minus(self._base.candidate) if self._base is not None else total.candidate
            x = np.asarray(self._outcomes(since), dtype=np.float64)
            p0, p1 = np.asarray(self.null), np.asarray(self.alt)
            used = (x > 0) & (p0 > 0)
            with np.errstate(divide="ignore"):
                self.llr = float(np.sum(x[used] * (np.log(p1[used]) - np.log(p0[used]))))
            if self.llr <= math.log(self.beta / (1.0 - self.alpha)):
                self.accepted = True
        reject = not self.accepted and self.llr >= math.log((1.0 - self.beta) / self.alpha)
        target = ORACLE_METRICS.get(self.kind)
        index = next((i for i, c in enumerate(checks) if c.metric == target), 0)
        results = []
        for i, check in enumerate(checks):
            if reject and i == index:
                results.append(
                    _result(check, Verdict.FAIL, f"SPRT log likelihood ratio {self.llr:.2f}", self.llr)
                )
            elif self.accepted:
                results.append(_result(check, Verdict.PASS, "SPRT accepted the null"))
            else:
                # Holding while the evidence favours the regression, like mesh-canary's judge,
                # for at most hold_s in a step (past it, more traffic rarely settles it).
                held = window.at - window.since
                leaning = i == index and self.llr > 0.0 and held < self.hold_s
                results.append(
                    _result(
                        check,
                        Verdict.INCONCLUSIVE,
                        f"SPRT log likelihood ratio {self.llr:.2f}",
                        leaning=leaning,
                    )
                )
        return results
