"""The anytime-valid judge: a verdict per check from per-version counts (see docs/statistics.md).

Pure: no I/O, no clock. The engine calls :meth:`AnytimeJudge.evaluate` at every analysis
tick with the step's cumulative window; every decision rests on confidence sequences, so
looking at every tick does not inflate the false-fail rate beyond ``ctx.alpha``.

Budget: ``ctx.alpha`` is split evenly across the checks that use statistics (Bonferroni),
and within a check evenly across the confidence sequences its bounds need (the
candidate's, stable's, the two-arm ratio test). A bound fails only when a sequence proves
it broken, so the chance that any check fails a candidate within tolerance in this
window is at most ``ctx.alpha``.

The data extraction (:func:`rate_counts`, :func:`latency_histograms`, ...) is public so
that other judges (the benchmark's Flagger- and Kayenta-style rules) read the same counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from mesh_canary.core import stats
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

INF = math.inf
_LABEL_METRICS = frozenset({"accuracy", "precision", "recall", "f1"})
_DEFAULT_QUANTILE = 0.99
# Leaning towards failure = a bound would fail on one-look intervals at this level (see
# AnytimeJudge). The point estimate alone leans on noise at small counts and held healthy
# candidates to a timeout; 0.3 balanced false rollbacks against promoted regressions in
# simulation (docs/statistics.md has the table).
DEFAULT_LEAN_ALPHA = 0.3


# ---------------------------------------------------------------------------------------
# Reading the counts


def _num(x: float | None) -> float:
    """A count as a float; None, NaN, infinities and negatives (a broken exporter) become 0."""
    if x is None:
        return 0.0
    x = float(x)
    return x if 1e-9 <= x < INF else 0.0  # below 1e-9: float dust, as in stats


def _value(x: float | None) -> float | None:
    """A custom value: None when missing, NaN or infinite (no data), else the float."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def stable_counts(window: Observation, ctx: JudgeContext) -> VersionCounts:
    """What relative bounds compare with: stable in the same window, or, after a blue/green
    switch, stable's preview window."""
    return ctx.stable_baseline.stable if ctx.stable_baseline is not None else window.stable


def concurrent(window: Observation, ctx: JudgeContext) -> bool:
    """Did both arms' counts come from the same stream of requests (same window)?"""
    return ctx.stable_baseline is None or ctx.stable_baseline.stable == window.stable


def rate_counts(check: Check, counts: VersionCounts) -> tuple[float, float]:
    """``(events, trials)`` of the rate a check judges, for one version.

    errorRate: errors / requests; latency slowerThan: requests above the bound / all;
    accuracy: correct / labelled; precision: true positives / predicted as the class;
    recall: true positives / actually the class; f1: true positives / (predicted or
    actually the class), since F1 = 2t / (1 + t) of that share t.
    """
    m = check.metric
    if m == "errorRate":
        return _num(counts.errors), _num(counts.requests)
    if m == "latency":
        h = counts.latency_ms
        if h is None or not h.counts or check.slower_than_ms is None:
            return 0.0, 0.0
        above, total, _ = stats.share_above(h.bounds, h.counts, check.slower_than_ms)
        return _num(above), _num(total)
    if m == "accuracy":
        return _num(counts.correct), _num(counts.labeled)
    k = check.class_ or ""
    tp = fp = fn = 0.0
    for (pred, actual), c in counts.confusion.items():
        c = _num(c)
        if pred == k and actual == k:
            tp += c
        elif pred == k:
            fp += c
        elif actual == k:
            fn += c
    if m == "precision":
        return tp, tp + fp
    if m == "recall":
        return tp, tp + fn
    if m == "f1":
        return tp, tp + fp + fn
    raise ValueError(f"{m} is not a rate metric")


def labelled(counts: VersionCounts) -> float:
    """Labelled predictions (ground truth received) in the window."""
    return sum(_num(c) for c in counts.confusion.values())


def latency_histograms(window: Observation, ctx: JudgeContext) -> tuple[Histogram | None, Histogram | None]:
    return window.candidate.latency_ms, stable_counts(window, ctx).latency_ms


def drift_counts(
    check: Check, candidate: VersionCounts, stable: VersionCounts
) -> tuple[list[str], list[float], list[float]] | str:
    """``(bins, candidate counts, stable counts)`` for a drift check, or why there are none."""
    if check.metric == "predictionDrift":
        keys = sorted(set(candidate.predictions) | set(stable.predictions))
        return (
            keys,
            [_num(candidate.predictions.get(k)) for k in keys],
            [_num(stable.predictions.get(k)) for k in keys],
        )
    feature = check.feature or ""
    hc, hs = candidate.features.get(feature), stable.features.get(feature)
    if hc is None or not hc.counts:
        return f"no histogram of feature {feature!r} for the candidate"
    if hs is None or not hs.counts:
        return f"no histogram of feature {feature!r} for stable"
    if hc.bounds != hs.bounds:
        return f"the two versions' histograms of feature {feature!r} have different buckets"
    keys = [f"<={b:g}" for b in hc.bounds]
    return keys, [_num(c) for c in hc.per_bucket()], [_num(c) for c in hs.per_bucket()]


# ---------------------------------------------------------------------------------------
# Formatting for people


def _pct(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    v = 100.0 * x
    body = f"{v:+.2f}" if signed else f"{v:.2f}"
    if 0 < abs(v) < 0.1:
        body = f"{v:+.2g}" if signed else f"{v:.2g}"
    return body + "%"


def _ms(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return (f"{x:+.4g}" if signed else f"{x:.4g}") + "ms"


def _times(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}x"


def _plain(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


class _Format(Protocol):
    def __call__(self, x: float, signed: bool = False) -> str: ...


_FORMATS: dict[str, _Format] = {"rate": _pct, "ms": _ms, "value": _plain}


def _level(alpha: float) -> str:
    """'99.9%' for alpha = 0.001: the confidence of a sequence, with enough digits."""
    digits = max(0, math.ceil(-math.log10(alpha)) - 2) if alpha > 0 else 3
    text = f"{100.0 * (1.0 - alpha):.{digits}f}"
    if float(text) >= 100.0:  # never round a confidence up to 100%
        text = f"{math.floor(100.0 * (1.0 - alpha) * 10**digits) / 10**digits:.{digits}f}"
    return text + "%"


# ---------------------------------------------------------------------------------------
# Judging bounds against estimates with confidence sequences


@dataclass(frozen=True)
class Est:
    """A point estimate with its confidence sequence at ``alpha``.

    ``exclusive`` means the true value is strictly above ``lo`` (histogram brackets), so a
    lower end equal to a limit already proves it broken.
    """

    est: float
    lo: float
    hi: float
    alpha: float
    exclusive: bool = False


@dataclass(frozen=True)
class _Outcome:
    kind: str  # max | min | maxIncrease | maxDecrease | maxIncreaseRatio
    relative: bool
    failed: bool
    passed: bool
    leaning: bool  # the evidence leans towards failure (re-judged by AnytimeJudge._lean)
    quantity: str
    est: Est | None  # None: no data to compare (e.g. stable missing)
    limit: float
    words: str  # the bound in words
    limit_text: str  # the limit in the quantity's units

    @property
    def beyond(self) -> bool:
        """The point estimate is beyond tolerance (however weak the evidence)."""
        e = self.est
        if e is None:
            return False
        if self.kind in ("min", "maxDecrease"):
            return e.est < self.limit
        return e.est > self.limit


def _bounds(check: Check) -> list[tuple[str, float]]:
    out = []
    for kind, v in (
        ("max", check.max),
        ("min", check.min),
        ("maxIncrease", check.max_increase),
        ("maxDecrease", check.max_decrease),
        ("maxIncreaseRatio", check.max_increase_ratio),
    ):
        if v is not None:
            out.append((kind, float(v)))
    return out


def _judge_bound(
    kind: str,
    limit: float,
    cand: Est,
    diff: Est | None,
    ratio: Est | None,
    unit: str,
) -> _Outcome:
    """One bound: failed (the sequence lies wholly beyond it), passed (wholly within), or
    neither; ``leaning`` starts as "the point estimate is beyond it"."""
    f = _FORMATS[unit]
    e: Est | None
    if kind in ("max", "min"):
        e, quantity, at, text = cand, "candidate", limit, f(limit)
        words = f"<= {text}" if kind == "max" else f">= {text}"
    elif kind == "maxIncrease":
        e, quantity, at, text = diff, "candidate - stable", limit, f(limit, True)
        words = f"<= stable + {f(limit)}"
    elif kind == "maxDecrease":
        e, quantity, at, text = diff, "candidate - stable", -limit, f(-limit, True)
        words = f">= stable - {f(limit)}"
    else:  # maxIncreaseRatio
        e, quantity, at, text = ratio, "candidate / stable", 1.0 + limit, _times(1.0 + limit)
        words = f"<= stable x {1.0 + limit:.3g}"
    relative = kind not in ("max", "min")
    if e is None:  # nothing to compare with (no data for stable)
        return _Outcome(kind, relative, False, False, False, quantity, None, at, words, text)
    if kind in ("min", "maxDecrease"):  # the quantity must stay at or above `at`
        failed, passed, beyond = e.hi < at, e.lo >= at, e.est < at
    else:  # at or below `at`; a bracket's exclusive lower end equal to `at` already breaks it
        failed = e.lo >= at if e.exclusive else e.lo > at
        passed, beyond = e.hi <= at, e.est > at
    return _Outcome(kind, relative, failed, passed, beyond, quantity, e, at, words, text)


def _diff(c: Est, s: Est, alpha: float) -> Est:
    return Est(c.est - s.est, c.lo - s.hi, c.hi - s.lo, alpha, c.exclusive or s.exclusive)


def _div(x: float, y: float) -> float:
    if y > 0:
        return x / y
    return INF if x > 0 else math.nan


def _ratio_from_arms(c: Est, s: Est, alpha: float) -> Est:
    return Est(
        _div(c.est, s.est),
        _div(c.lo, s.hi) if c.lo > 0 else 0.0,
        _div(c.hi, s.lo),
        alpha,
        c.exclusive or s.exclusive,
    )


@dataclass(frozen=True)
class _Subject:
    """What a verdict is about, for sentences: e.g. 'error rate', 'p99 latency'."""

    label: str
    unit: str  # rate | ms | value
    samples_word: str  # requests | labelled predictions | ...


# Which bound an inconclusive verdict talks about: the most telling one.
_SHOWN_FIRST: tuple[Callable[[_Outcome], bool], ...] = (
    lambda o: o.failed,
    lambda o: o.leaning,
    lambda o: o.beyond,
    lambda o: o.relative and not o.passed,
    lambda o: not o.passed,
)


def _combine(
    check: Check,
    subject: _Subject,
    outcomes: list[_Outcome],
    cand: Est,
    stable: Est | None,
    n_c: float,
    n_s: float | None,
    need: int,
    notes: Sequence[str] = (),
) -> CheckResult:
    """One verdict from every bound's outcome, with the sentence a person reads."""
    relative = any(o.relative for o in outcomes)
    enough = n_c >= need and (not relative or (n_s is not None and n_s >= need))
    f = _FORMATS[subject.unit]
    failing = [o for o in outcomes if o.failed and (enough or not o.relative)]
    if failing:
        verdict, shown = Verdict.FAIL, failing[0]
    elif enough and outcomes and all(o.passed for o in outcomes):
        verdict, shown = Verdict.PASS, next((o for o in outcomes if o.relative), outcomes[0])
    else:
        verdict = Verdict.INCONCLUSIVE
        shown = next((o for wanted in _SHOWN_FIRST for o in outcomes if wanted(o)), outcomes[0])
    leaning = verdict is Verdict.INCONCLUSIVE and any(o.leaning or o.failed for o in outcomes)

    # The sentence: the values, then what the shown bound's sequence says.
    values = f"{subject.label} {f(cand.est)}"
    if stable is not None and relative:
        values += f" vs stable {f(stable.est)}"
    e = shown.est
    if e is None:
        detail = f"no data for stable to compare with ({shown.words})"
    else:
        qunit = _times if shown.kind == "maxIncreaseRatio" else f
        signed = shown.kind in ("maxIncrease", "maxDecrease")
        what = {"maxIncrease": "difference ", "maxDecrease": "difference ", "maxIncreaseRatio": "ratio "}.get(
            shown.kind, ""
        )
        cs = f"{_level(e.alpha)} CS {qunit(e.lo, signed)}..{qunit(e.hi, signed)}"
        head = f"{what}{qunit(e.est, signed)} ({cs})" if shown.relative else f"({cs})"
        tol = "the tolerated" if shown.relative else "the limit"
        if verdict is Verdict.FAIL:
            verb = "is below" if shown.kind in ("min", "maxDecrease") else "exceeds"
            detail = f"{head} {verb} {tol} {shown.limit_text}"
        elif verdict is Verdict.PASS:
            detail = f"{head} is within {tol} {shown.limit_text}"
            if len(outcomes) > 1:
                detail += ", as is every other bound"
        elif shown.failed:
            detail = f"{head} is beyond {tol} {shown.limit_text}, proven but short of the minimum samples"
        elif shown.leaning:
            detail = f"{head} is beyond {tol} {shown.limit_text} but not proven yet"
        elif shown.beyond:
            detail = f"{head} is beyond {tol} {shown.limit_text} on evidence too weak to hold the step"
        else:
            detail = f"{head} is not yet proven within {tol} {shown.limit_text}"
    reason = f"{values}: {detail}" if shown.relative or e is None else f"{values} {detail}"
    if not enough and verdict is not Verdict.FAIL:
        have = f"{n_c:.0f}" if not relative or n_s is None else f"{n_c:.0f} and {n_s:.0f}"
        reason += f"; waiting for {need} {subject.samples_word} per version (have {have})"
    for note in notes:
        reason += f"; {note}"

    shown_est = shown.est
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=verdict,
        reason=reason,
        estimate=_finite_or_none(shown_est.est if shown_est else cand.est),
        stable_estimate=_finite_or_none(stable.est) if stable is not None else None,
        lower=_finite_or_none(shown_est.lo) if shown_est else None,
        upper=_finite_or_none(shown_est.hi) if shown_est else None,
        bound=shown.words,
        quantity=f"{shown.quantity} ({subject.label})",
        samples=n_c,
        enough_data=enough,
        leaning_fail=leaning,
    )


def _finite_or_none(x: float) -> float | None:
    """Results are stored as JSON (a custom resource's status): no NaN, no infinity. An
    unbounded end is None; the reason says 'inf'."""
    return x if math.isfinite(x) else None


def _inconclusive(check: Check, reason: str, samples: float = 0.0, enough: bool = False) -> CheckResult:
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=Verdict.INCONCLUSIVE,
        reason=reason,
        samples=samples,
        enough_data=enough,
    )


# ---------------------------------------------------------------------------------------
# The judge


class AnytimeJudge:
    """Verdicts from confidence sequences; see the module docstring and docs/statistics.md."""

    def __init__(
        self,
        small_rate_prior: stats.BetaPrior = stats.SMALL_RATE_PRIOR,
        general_prior: stats.BetaPrior = stats.GENERAL_PRIOR,
        share_prior: stats.BetaPrior = stats.SHARE_PRIOR,
        lean_alpha: float | None = DEFAULT_LEAN_ALPHA,
    ) -> None:
        """``lean_alpha``: a check leans towards failure when its bounds, judged with one-look
        likelihood-ratio intervals at this level (two-sided; not anytime-valid), would fail;
        None: whenever the point estimate is beyond tolerance. Leaning decides holding
        versus advancing, never failing."""
        self.small_rate_prior = small_rate_prior
        self.general_prior = general_prior
        self.share_prior = share_prior
        self.lean_alpha = lean_alpha

    def _lean(self, outcomes: list[_Outcome], judged_at: Callable[[float], list[_Outcome]]) -> list[_Outcome]:
        """Keep ``leaning`` only where the evidence leans: the point estimate is beyond
        tolerance and so is the one-look likelihood interval at the lenient level."""
        if self.lean_alpha is None or not any(o.leaning and not o.failed for o in outcomes):
            return outcomes
        lenient = judged_at(self.lean_alpha)
        return [
            o if o.failed or not o.leaning else replace(o, leaning=easy.failed)
            for o, easy in zip(outcomes, lenient, strict=True)
        ]

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        if window.problem:
            return [_inconclusive(c, f"no data: {window.problem}") for c in checks]
        spending = sum(1 for c in checks if _uses_statistics(c, ctx))
        alpha = ctx.alpha if ctx.alpha == ctx.alpha else 0.0
        alpha_check = min(max(alpha, 1e-15), 0.5) / max(spending, 1)
        return [self.evaluate_check(c, window, ctx, alpha_check) for c in checks]

    def evaluate_check(
        self, check: Check, window: Observation, ctx: JudgeContext, alpha: float
    ) -> CheckResult:
        """One check with its own false-fail budget ``alpha``."""
        m = check.metric
        if m == "errorRate" or m in _LABEL_METRICS or (m == "latency" and check.slower_than_ms is not None):
            return self._rate(check, window, ctx, alpha)
        if m == "latency":
            return self._quantile(check, window, ctx, alpha)
        if m in ("predictionDrift", "featureDrift"):
            return self._drift(check, window, ctx, alpha)
        if m == "trafficShare":
            return self._traffic_share(check, window, ctx, alpha)
        if m == "custom":
            return _custom(check, window, ctx)
        return _inconclusive(check, f"unknown metric {m!r}")

    # -- rates ---------------------------------------------------------------------------

    def _rate(self, check: Check, window: Observation, ctx: JudgeContext, alpha: float) -> CheckResult:
        m = check.metric
        stable_vc = stable_counts(window, ctx)
        s_c, n_c = rate_counts(check, window.candidate)
        s_s, n_s = rate_counts(check, stable_vc)
        from_labels = m in _LABEL_METRICS
        notes: list[str] = []
        if m == "errorRate":
            subject = _Subject("error rate", "rate", "requests")
        elif m == "latency":
            h = window.candidate.latency_ms
            threshold = float(check.slower_than_ms or 0.0)
            if h is None or not h.counts:
                return _inconclusive(check, "no data for the candidate: no latency histogram")
            used = stats.share_above(h.bounds, h.counts, threshold)[2]
            if used != used:
                return _inconclusive(check, f"no bucket bound at or above {_ms(threshold)} to judge against")
            subject = _Subject(f"share slower than {_ms(used)}", "rate", "requests")
            if used != threshold:
                notes.append(
                    f"judged at {_ms(used)}, the next bucket bound above {_ms(threshold)} (the share "
                    f"slower than {_ms(threshold)} can only be higher)"
                )
            hs = stable_vc.latency_ms
            if hs is not None and hs.counts and hs.bounds != h.bounds:
                return _inconclusive(
                    check, "the two versions' latency histograms have different buckets", samples=n_c
                )
        elif m == "accuracy":
            subject = _Subject("accuracy", "rate", "labelled predictions")
        else:
            subject = _Subject(f"{m} for class {check.class_!r}", "rate", "labelled predictions")

        if n_c <= 0:
            what = "no labelled predictions" if from_labels else "no requests"
            if m in ("precision", "recall", "f1"):
                what = f"no labelled predictions involving class {check.class_!r}"
            return _inconclusive(check, f"no data for the candidate: {what} in this window")

        bounds = _bounds(check)
        if not bounds:
            return _inconclusive(check, "no bound to judge", samples=n_c, enough=True)
        kinds = {k for k, _ in bounds}
        has_abs = bool(kinds & {"max", "min"})
        has_diff = bool(kinds & {"maxIncrease", "maxDecrease"})
        has_ratio = "maxIncreaseRatio" in kinds
        stable_ok = n_s > 0
        f1 = m == "f1"
        use_theta = has_ratio and stable_ok and not f1 and concurrent(window, ctx)
        needs_stable = stable_ok and (has_diff or (has_ratio and not use_theta))
        objects = int(has_abs or needs_stable) + int(needs_stable) + int(use_theta)

        def judged_at(level: float, fixed: bool = False) -> tuple[Est, Est | None, list[_Outcome]]:
            """Every bound judged with confidence sequences whose errors sum to ``level``
            (``fixed``: one-look likelihood intervals at ``level`` each, for leaning)."""
            a = level if fixed else level / max(objects, 1)
            cand = self._rate_est(m, s_c, n_c, a, fixed)
            stable = self._rate_est(m, s_s, n_s, a, fixed) if stable_ok else None
            diff = _diff(cand, stable, a) if stable is not None and needs_stable else None
            ratio: Est | None = None
            if use_theta:
                rho = n_c / (n_c + n_s)
                if fixed:
                    t_lo, t_hi = stats.likelihood_interval(s_c, s_c + s_s, a)
                    lo, hi = stats.share_to_ratio(t_lo, rho), stats.share_to_ratio(t_hi, rho)
                else:
                    lo, hi = stats.ratio_cs(s_c, s_s, rho, a, self.share_prior)
                ratio = Est(_div(s_c / n_c, s_s / n_s), lo, hi, a)
            elif has_ratio and stable is not None:
                ratio = _ratio_from_arms(cand, stable, a)
            return cand, stable, [_judge_bound(k, v, cand, diff, ratio, subject.unit) for k, v in bounds]

        cand, stable, outcomes = judged_at(alpha)
        outcomes = self._lean(outcomes, lambda level: judged_at(level, True)[2])
        need = _min_samples(check, ctx)
        if m == "latency" or m == "errorRate":
            samples_c, samples_s = n_c, n_s
        else:
            samples_c, samples_s = labelled(window.candidate), labelled(stable_vc)
        if not stable_ok and (has_diff or has_ratio):
            notes.append("no data for stable in this window")
        return _combine(check, subject, outcomes, cand, stable, samples_c, samples_s, need, notes)

    def _rate_est(self, metric: str, s: float, n: float, alpha: float, fixed: bool = False) -> Est:
        """The metric's value and confidence sequence from its counts (``fixed``: the
        one-look likelihood interval instead, for leaning)."""
        if n <= 0:
            return Est(math.nan, 0.0, 1.0, alpha)
        general = metric in ("precision", "recall", "f1")
        prior = self.general_prior if general else self.small_rate_prior

        def interval(events: float) -> tuple[float, float]:
            if fixed:
                return stats.likelihood_interval(events, n, alpha)
            return stats.rate_cs(events, n, alpha, prior)

        if metric == "accuracy":
            # Judged as the wrong-prediction rate, a small rate, then flipped.
            lo, hi = interval(n - s)
            return Est(s / n, 1.0 - hi, 1.0 - lo, alpha)
        lo, hi = interval(s)
        if metric == "f1":
            return Est(_f1(s / n), _f1(lo), _f1(hi), alpha)
        return Est(s / n, lo, hi, alpha)

    # -- latency quantiles ---------------------------------------------------------------

    def _quantile(self, check: Check, window: Observation, ctx: JudgeContext, alpha: float) -> CheckResult:
        q = check.quantile if check.quantile is not None else _DEFAULT_QUANTILE
        label = f"p{_quantile_name(q)} latency"
        hc, hs = latency_histograms(window, ctx)
        n_c = _num(hc.total) if hc is not None and hc.counts else 0.0
        if hc is None or n_c <= 0:
            return _inconclusive(check, "no data for the candidate: no latency observations in this window")
        n_s = _num(hs.total) if hs is not None and hs.counts else 0.0
        bounds = _bounds(check)
        if not bounds:
            return _inconclusive(check, "no bound to judge", samples=n_c, enough=True)
        if hs is not None and hs.counts and hs.bounds != hc.bounds:
            return _inconclusive(
                check, "the two versions' latency histograms have different buckets", samples=n_c
            )
        kinds = {k for k, _ in bounds}
        relative = bool(kinds - {"max", "min"})
        stable_ok = relative and n_s > 0
        notes: list[str] = []
        if relative and not stable_ok:
            notes.append("no data for stable in this window")

        def judged_at(level: float, fixed: bool = False) -> tuple[Est, Est | None, list[_Outcome]]:
            a = level if fixed else level / (2 if stable_ok else 1)
            bc = stats.quantile_bracket(hc.bounds, hc.counts, q, a, self.small_rate_prior, fixed)
            cand = Est(bc.estimate, bc.lower, bc.upper, a, exclusive=True)
            stable: Est | None = None
            diff = ratio = None
            if stable_ok and hs is not None:
                bs = stats.quantile_bracket(hs.bounds, hs.counts, q, a, self.small_rate_prior, fixed)
                stable = Est(bs.estimate, bs.lower, bs.upper, a, exclusive=True)
                diff = _diff(cand, stable, a)
                ratio = _ratio_from_arms(cand, stable, a)
            return cand, stable, [_judge_bound(k, v, cand, diff, ratio, "ms") for k, v in bounds]

        def lenient(level: float) -> list[_Outcome]:
            outs = judged_at(level, True)[2]
            if not stable_ok or hs is None:
                return outs
            # Coarse buckets rarely separate two brackets, so a rise leans when the candidate
            # has more mass than stable above the bucket bound below its estimate.
            heavier = _heavier_tail(hc, hs, cand.est, level)
            rising = ("maxIncrease", "maxIncreaseRatio")
            return [replace(o, failed=o.failed or (o.kind in rising and heavier)) for o in outs]

        cand, stable, outcomes = judged_at(alpha)
        outcomes = self._lean(outcomes, lenient)
        tail = n_c * (1.0 - q)
        if math.isinf(cand.hi):
            notes.append(
                f"only ~{tail:.0f} candidate samples lie beyond its p{_quantile_name(q)}: too few to bound "
                f"it from above (that takes a few hundred requests beyond it)"
            )
        undecided = any(o.relative and not o.passed and not o.failed for o in outcomes)
        if undecided and stable is not None and math.isfinite(cand.hi) and math.isfinite(stable.hi):
            notes.append(
                f"bracketed by buckets: candidate ({_ms(cand.lo)}, {_ms(cand.hi)}], stable "
                f"({_ms(stable.lo)}, {_ms(stable.hi)}]; the buckets may be too coarse to prove "
                f"the tolerance"
            )
        subject = _Subject(label, "ms", "requests")
        return _combine(
            check,
            subject,
            outcomes,
            cand,
            stable,
            n_c,
            n_s if relative else None,
            _min_samples(check, ctx),
            notes,
        )

    # -- drift ---------------------------------------------------------------------------

    def _drift(self, check: Check, window: Observation, ctx: JudgeContext, alpha: float) -> CheckResult:
        what = (
            "prediction distribution"
            if check.metric == "predictionDrift"
            else f"{check.feature} distribution"
        )
        got = drift_counts(check, window.candidate, stable_counts(window, ctx))
        if isinstance(got, str):
            if "candidate" in got:
                return _inconclusive(check, f"no data for the candidate: {got}")
            return _inconclusive(check, got)
        _, xc, xs = got
        n_c, n_s = sum(xc), sum(xs)
        if n_c <= 0:
            return _inconclusive(check, f"no data for the candidate: no observations of its {what}")
        if n_s <= 0:
            return _inconclusive(check, f"no data for stable: no observations of its {what}", samples=n_c)
        max_psi = check.max_psi
        if max_psi is None:
            return _inconclusive(check, "no maxPSI to judge", samples=n_c, enough=True)
        need = _min_samples(check, ctx)
        enough = n_c >= need and n_s >= need
        point = stats.psi(xc, xs)
        lo, hi = stats.psi_bounds(xc, xs, alpha, prior=self.general_prior)
        log_bf = stats.multinomial_log_bayes_factor(xc, xs, prior=self.share_prior)
        differ = log_bf >= math.log(1.0 / alpha)
        # Fail needs both: the sequential test proves the distributions differ, and the PSI's
        # confidence sequence lies wholly above maxPSI. Either alone is valid at alpha, so
        # requiring both spends no extra budget.
        if enough and differ and lo > max_psi:
            verdict = Verdict.FAIL
        elif enough and hi <= max_psi:
            verdict = Verdict.PASS
        else:
            verdict = Verdict.INCONCLUSIVE
        leaning = verdict is Verdict.INCONCLUSIVE and point > max_psi and log_bf > 0.0
        cs = f"{_level(alpha)} CS {lo:.3f}..{hi:.3f}"
        bf = f"Bayes factor for a difference {_bayes(log_bf)}"
        head = f"{what} PSI {point:.3f} ({cs}; {bf})"
        if verdict is Verdict.FAIL:
            reason = f"{head} exceeds maxPSI {max_psi:g}"
        elif verdict is Verdict.PASS:
            reason = f"{head} is within maxPSI {max_psi:g}"
        elif leaning:
            reason = f"{head} is above maxPSI {max_psi:g} but not proven yet"
        else:
            reason = f"{head} is not yet proven within maxPSI {max_psi:g}"
        if not enough:
            reason += f"; waiting for {need} observations per version (have {n_c:.0f} and {n_s:.0f})"
        return CheckResult(
            name=check.name,
            metric=check.metric,
            verdict=verdict,
            reason=reason,
            estimate=point,
            stable_estimate=0.0,
            lower=lo,
            upper=hi,
            bound=f"PSI <= {max_psi:g}",
            quantity=f"PSI of the candidate's {what} against stable's",
            samples=n_c,
            enough_data=enough,
            leaning_fail=leaning,
        )

    # -- traffic share -------------------------------------------------------------------

    def _traffic_share(
        self, check: Check, window: Observation, ctx: JudgeContext, alpha: float
    ) -> CheckResult:
        if ctx.mirrored:
            return CheckResult(
                name=check.name,
                metric=check.metric,
                verdict=Verdict.PASS,
                reason="not applicable: the candidate sees a mirrored copy of the traffic",
                bound="skipped while mirrored",
                enough_data=True,
            )
        n_c, n_s = _num(window.candidate.requests), _num(window.stable.requests)
        if n_c <= 0:
            return _inconclusive(check, "no data for the candidate: no requests in this window")
        d = check.max_deviation
        if d is None:
            return _inconclusive(check, "no maxDeviation to judge", samples=n_c, enough=True)
        w = min(max(ctx.candidate_share, 0.0), 1.0)
        share = n_c / (n_c + n_s)
        lo, hi = stats.rate_cs(n_c, n_c + n_s, alpha, self.general_prior)
        need = _min_samples(check, ctx)
        enough = n_c >= need
        # A proven mismatch fails at any sample size: it compares with the configured weight,
        # not with stable's behaviour.
        if lo > w + d or hi < w - d:
            verdict = Verdict.FAIL
        elif enough and lo >= w - d and hi <= w + d:
            verdict = Verdict.PASS
        else:
            verdict = Verdict.INCONCLUSIVE
        leaning = verdict is Verdict.INCONCLUSIVE and abs(share - w) > d
        if leaning and self.lean_alpha is not None:
            easy_lo, easy_hi = stats.likelihood_interval(n_c, n_c + n_s, self.lean_alpha)
            leaning = easy_lo > w + d or easy_hi < w - d
        head = (
            f"candidate's share of requests {_pct(share)} ({_level(alpha)} CS {_pct(lo)}..{_pct(hi)}) "
            f"against its weight {_pct(w)}"
        )
        tol = f"the tolerated deviation {_pct(d)}"
        if verdict is Verdict.FAIL:
            reason = f"{head} deviates by more than {tol}"
        elif verdict is Verdict.PASS:
            reason = f"{head} is within {tol}"
        elif leaning:
            reason = f"{head} deviates by more than {tol} but not proven yet"
        else:
            reason = f"{head} is not yet proven within {tol}"
        if not enough:
            reason += f"; waiting for {need} candidate requests (have {n_c:.0f})"
        return CheckResult(
            name=check.name,
            metric=check.metric,
            verdict=verdict,
            reason=reason,
            estimate=share,
            stable_estimate=None,
            lower=lo,
            upper=hi,
            bound=f"within {w:g} +/- {d:g}",
            quantity="candidate's share of requests",
            samples=n_c,
            enough_data=enough,
            leaning_fail=leaning,
        )


def _custom(check: Check, window: Observation, ctx: JudgeContext) -> CheckResult:
    """A user's value per version: no counts behind it, so no statistics. Judged as a point
    value against its bounds once both versions have their minimum requests: it fails only
    when the value is present and outside a bound."""
    c = _value(window.candidate.custom.get(check.name))
    if c is None:
        return _inconclusive(check, f"no data for the candidate: no value for {check.name!r}")
    stable_vc = stable_counts(window, ctx)
    s = _value(stable_vc.custom.get(check.name))
    bounds = _bounds(check)
    if not bounds:
        return _inconclusive(check, "no bound to judge", enough=True)
    point = Est(c, c, c, 1.0)
    stable = Est(s, s, s, 1.0) if s is not None else None
    diff = _diff(point, stable, 1.0) if stable is not None else None
    ratio = Est(_div(c, s), _div(c, s), _div(c, s), 1.0) if s is not None else None
    outcomes = [_judge_bound(k, v, point, diff, ratio, "value") for k, v in bounds]
    relative = any(o.relative for o in outcomes)
    need = ctx.min_requests
    n_c = _num(window.candidate.requests)
    n_s = _num(stable_vc.requests)
    enough = n_c >= need and (not relative or n_s >= need)
    broken = [o for o in outcomes if o.failed]
    if broken and enough:
        verdict, shown = Verdict.FAIL, broken[0]
    elif enough and all(o.passed for o in outcomes):
        verdict, shown = Verdict.PASS, outcomes[0]
    else:
        verdict, shown = (
            Verdict.INCONCLUSIVE,
            (broken or [o for o in outcomes if o.est is None] or outcomes)[0],
        )
    values = f"{check.name} {_plain(c)}" + (f" vs stable {_plain(s)}" if s is not None and relative else "")
    if shown.est is None:
        reason = f"{values}: no value for stable to compare with ({shown.words})"
    else:
        state = "outside" if shown.failed else "within"
        reason = f"{values} is {state} the bound {shown.words} (a point value: no confidence bounds)"
    if not enough:
        reason += f"; waiting for {need} requests per version"
    e = shown.est
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=verdict,
        reason=reason,
        estimate=_finite_or_none(e.est) if e else c,
        stable_estimate=s,
        lower=_finite_or_none(e.lo) if e else None,
        upper=_finite_or_none(e.hi) if e else None,
        bound=shown.words,
        quantity=f"{shown.quantity} ({check.name})",
        samples=n_c,
        enough_data=enough,
        leaning_fail=verdict is Verdict.INCONCLUSIVE and bool(broken),
    )


def _heavier_tail(candidate: Histogram, stable: Histogram, estimate: float, level: float) -> bool:
    """Does the candidate have more of its requests than stable above the largest bucket bound
    below ``estimate``, on one-look evidence at ``level`` (the two-arm share of those slow
    requests)? For leaning only."""
    below = [i for i, b in enumerate(candidate.bounds) if b < estimate and b != INF]
    if not below:
        return False
    i = below[-1]
    n_c, n_s = _num(candidate.total), _num(stable.total)
    if n_c <= 0 or n_s <= 0:
        return False
    slow_c = _num(n_c - _num(candidate.counts[i]))
    slow_s = _num(n_s - _num(stable.counts[i]))
    lo, _ = stats.likelihood_interval(slow_c, slow_c + slow_s, level)
    return stats.share_to_ratio(lo, n_c / (n_c + n_s)) > 1.0


def _uses_statistics(check: Check, ctx: JudgeContext) -> bool:
    if check.metric == "custom":
        return False
    return not (check.metric == "trafficShare" and ctx.mirrored)


def _min_samples(check: Check, ctx: JudgeContext) -> int:
    if check.metric in _LABEL_METRICS:
        return check.min_labeled if check.min_labeled is not None else ctx.min_requests
    return ctx.min_requests


def _f1(t: float) -> float:
    """F1 from t = TP / (TP + FP + FN): F1 = 2TP / (2TP + FP + FN) = 2t / (1 + t)."""
    return 2.0 * t / (1.0 + t)


def _quantile_name(q: float) -> str:
    return f"{100.0 * q:g}"


def _bayes(log_bf: float) -> str:
    if log_bf > 700:
        return "> 1e300"
    return f"{math.exp(log_bf):.3g}"
