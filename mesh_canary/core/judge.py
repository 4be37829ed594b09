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
from dataclasses import dataclass, replace
from typing import Any, Protocol

from mesh_canary.core import stats
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

INF = math.inf
_LABEL_METRICS = frozenset({"accuracy", "precision", "recall", "f1"})
_DEFAULT_QUANTILE = 0.99
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
# Holding a step is worth it only while more traffic can settle the question. At low
# traffic a healthy candidate whose estimate drifted past tolerance may stay there for the
# whole maxStepDuration and be rolled back at the deadline; a regressed one at realistic
# traffic is proven within minutes of holding. So the evidence needed to keep holding rises
# with the time the step has run, to this posterior probability after this long (the
# default maxStepDuration is 15m). Chosen by the benchmark (docs/benchmarks.md).
DEFAULT_HOLD_RAMP_S = 600.0
DEFAULT_HOLD_RELEASE_PROBABILITY = 0.97


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


# ---------------------------------------------------------------------------------------
# Evidence over the whole rollout


@dataclass(frozen=True)
class Evidence:
    """What checks are judged on.

    ``strata`` are the windows whose evidence adds up: the completed canary steps' windows
    (``ctx.earlier_windows``) and then the current one, or just the current one. ``window``
    is their sum (per-version counts over the whole rollout so far); ``windows`` is how many
    of the engine's per-window budgets the judge may spend on it at once.
    """

    current: Observation
    window: Observation
    strata: tuple[Observation, ...]
    windows: int


def gather_evidence(window: Observation, ctx: JudgeContext) -> Evidence:
    """The evidence a canary step is judged on.

    Adding earlier steps is sound when each version's behaviour does not depend on its
    traffic weight (it is the same model whatever share it serves). It needs the whole
    history: with every completed step present, one sequence runs from the first request
    to the last and may spend the whole rollout's budget (every judged window's share).
    Blue/green windows, mirrored previews and incomplete histories (a state saved without
    them) are judged on their own window at ``ctx.alpha``, as before.
    """
    earlier = tuple(w for _, w in ctx.earlier_windows)
    whole = (
        ctx.stable_baseline is None
        and not ctx.mirrored
        and len(earlier) == ctx.step_index
        and not any(w.problem for w in earlier)
    )
    if not whole:
        return Evidence(window, window, (window,), 1)
    strata = (*earlier, window)
    total = window
    if earlier:
        total = Observation(
            earlier[0].since,
            window.at,
            _sum_counts([w.stable for w in strata]),
            _sum_counts([w.candidate for w in strata]),
        )
    # Steps are rising percentages ending at 100, and every step but the last is judged.
    return Evidence(window, total, strata, max(ctx.step_count - 1, 1))


def _sum_counts(parts: Sequence[VersionCounts]) -> VersionCounts:
    """Counts over consecutive windows added up (histograms with other bounds than the
    latest window's are left out: their buckets cannot be added)."""
    last = parts[-1]

    def hist(hs: Sequence[Histogram | None], like: Histogram | None) -> Histogram | None:
        if like is None:
            return None
        sums = [0.0] * len(like.counts)
        for h in hs:
            if h is not None and h.bounds == like.bounds:
                for i, c in enumerate(h.counts):
                    sums[i] += _num(c)
        return Histogram(like.bounds, tuple(sums))

    def add(maps: Sequence[dict[Any, float]]) -> dict[Any, float]:
        out: dict[Any, float] = {}
        for m in maps:
            for k, v in m.items():
                out[k] = out.get(k, 0.0) + _num(v)
        return out

    return VersionCounts(
        requests=sum(_num(p.requests) for p in parts),
        errors=sum(_num(p.errors) for p in parts),
        latency_ms=hist([p.latency_ms for p in parts], last.latency_ms),
        confusion=add([p.confusion for p in parts]),
        predictions=add([p.predictions for p in parts]),
        features={
            k: h for k, h0 in last.features.items() if (h := hist([p.features.get(k) for p in parts], h0))
        },
        custom=dict(last.custom),
    )


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


def _intersect(x: Est, y: Est) -> Est:
    """Two valid intervals for the same quantity (their budgets already split): both
    cover, so their intersection does. An end taken from an open interval stays open."""
    lo_from_y = y.lo > x.lo or (y.lo == x.lo and y.exclusive)
    return Est(x.est, max(x.lo, y.lo), min(x.hi, y.hi), x.alpha, y.exclusive if lo_from_y else x.exclusive)


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
    m = check.metric
    out: list[tuple[str, float]] = []
    if m in ("errorRate", "trafficShare", "custom"):
        out += [("requests", counts.requests), ("errors", counts.errors)][: 1 if m != "errorRate" else 2]
    if m == "latency" and counts.latency_ms is not None:
        out += [("latency bucket", c) for c in counts.latency_ms.counts]
    if m in _LABEL_METRICS:
        out += [("labelled predictions", c) for c in counts.confusion.values()]
    if m == "predictionDrift":
        out += [("predictions", c) for c in counts.predictions.values()]
    if m == "featureDrift":
        h = counts.features.get(check.feature or "")
        out += [(f"{check.feature} bucket", c) for c in (h.counts if h is not None else ())]
    return out


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
    return max((abs(v) for v in values if math.isfinite(v)), default=0.0)


def _scaled(counts: VersionCounts, f: float) -> VersionCounts:
    def hist(h: Histogram) -> Histogram:
        return Histogram(h.bounds, tuple(c * f for c in h.counts))

    return replace(
        counts,
        requests=counts.requests * f,
        errors=counts.errors * f,
        latency_ms=hist(counts.latency_ms) if counts.latency_ms is not None else None,
        confusion={k: v * f for k, v in counts.confusion.items()},
        predictions={k: v * f for k, v in counts.predictions.items()},
        features={k: hist(h) for k, h in counts.features.items()},
    )


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
        return replace(w, stable=_scaled(w.stable, f), candidate=_scaled(w.candidate, f))

    ctx = replace(
        ctx,
        earlier_windows=tuple((share, scale(w)) for share, w in ctx.earlier_windows),
        stable_baseline=scale(ctx.stable_baseline) if ctx.stable_baseline is not None else None,
    )
    return scale(window), ctx


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
        lean_alpha: float | None = DEFAULT_LEAN_ALPHA,
        final_lean_probability: float = DEFAULT_FINAL_LEAN_PROBABILITY,
        ratio_scale: float = stats.RATIO_PRIOR_SCALE,
        lean_prior_sd: float = DEFAULT_LEAN_PRIOR_SD,
        hold_ramp_s: float = DEFAULT_HOLD_RAMP_S,
        hold_release_probability: float = DEFAULT_HOLD_RELEASE_PROBABILITY,
        accumulate: bool = True,
    ) -> None:
        """Knobs of holding versus advancing (never of failing) and of the two-arm tests.

        ``lean_alpha``: before the promoting step, a check leans towards failure (holds the
        step) when it is beyond tolerance with probability 1 - lean_alpha/2: on one-look
        likelihood-ratio intervals at this two-sided level (not anytime-valid) for absolute
        bounds, on the posterior under ``lean_prior_sd`` for relative bounds of rates; None:
        whenever the point estimate is beyond tolerance. ``final_lean_probability``: the
        probability that holds the step whose success promotes (the last before 100%).
        ``hold_ramp_s``, ``hold_release_probability``: the longer a step has run, the more
        probable "beyond tolerance" must be to keep holding it, rising quadratically to
        ``hold_release_probability`` over ``hold_ramp_s`` (0: no ramp). ``ratio_scale``: the
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
        self.hold_ramp_s = hold_ramp_s
        self.hold_release_probability = hold_release_probability
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
        ``lean_alpha`` (or of ``level``), raised towards ``hold_release_probability`` the
        longer the step has run (``hold_ramp_s``).
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
        if self.hold_ramp_s <= 0:
            return p0
        held = min(max(window.at - window.since, 0.0) / self.hold_ramp_s, 1.0)
        # Quadratic: barely stricter in a step's first minutes, where holding is cheap and a
        # regression at realistic traffic gets proven; strict near the end of the ramp.
        return p0 + max(self.hold_release_probability - p0, 0.0) * held * held

    @staticmethod
    def lean_probability(level: float | None) -> float:
        """The posterior probability of being beyond tolerance equivalent to a one-look
        level (two-sided ``level``: 1 - level/2; None: 1/2, the point estimate)."""
        return 0.5 if level is None else 1.0 - level / 2.0

    def _lean(
        self, outcomes: list[_Outcome], judged_at: Callable[[float], list[_Outcome]], p: float | None
    ) -> list[_Outcome]:
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
                o if o.failed or not o.leaning else replace(o, leaning=easy.failed)
                for o, easy in zip(outcomes, lenient, strict=True)
            ]
        strict = judged_at(max(2.0 * p, 1e-12))
        return [
            o if o.failed else replace(o, leaning=o.leaning or not easy.passed)
            for o, easy in zip(outcomes, strict, strict=True)
        ]

    def evidence(self, window: Observation, ctx: JudgeContext) -> Evidence:
        """What this judge rests its verdicts on (see :func:`gather_evidence`)."""
        if not self.accumulate:
            return Evidence(window, window, (window,), 1)
        return gather_evidence(window, ctx)

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        if window.problem:
            return [_inconclusive(c, f"no data: {window.problem}") for c in checks]
        window, ctx = _within_judged_range(window, ctx)
        ev = self.evidence(window, ctx)
        spending = sum(1 for c in checks if _uses_statistics(c, ctx))
        alpha = ctx.alpha if ctx.alpha == ctx.alpha else 0.0
        alpha_check = min(max(alpha * ev.windows, 1e-15), 0.5) / max(spending, 1)
        return [self._evaluate_safely(c, ev, ctx, alpha_check) for c in checks]

    def evaluate_check(
        self, check: Check, window: Observation, ctx: JudgeContext, alpha: float
    ) -> CheckResult:
        """One check with its own false-fail budget ``alpha`` (for the whole evidence)."""
        window, ctx = _within_judged_range(window, ctx)
        return self._evaluate_safely(check, self.evidence(window, ctx), ctx, alpha)

    def _evaluate_safely(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        """A failure to judge is a failed check (never a pass, never a crash that leaves
        the traffic where it is): impossible counts, or any error in the statistics."""
        for w in (*ev.strata, *([ctx.stable_baseline] if ctx.stable_baseline is not None else [])):
            bad = _impossible_count(check, w)
            if bad is not None:
                return could_not_judge(check, f"the metrics source returned {bad}")
        try:
            return self._evaluate(check, ev, ctx, alpha)
        except Exception as e:  # pure code: catching is fine, and the rollback says why
            return could_not_judge(check, f"{type(e).__name__}: {e}")

    def _evaluate(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        m = check.metric
        if m == "errorRate" or m in _LABEL_METRICS or (m == "latency" and check.slower_than_ms is not None):
            return self._rate(check, ev, ctx, alpha)
        if m == "latency":
            return self._quantile(check, ev, ctx, alpha)
        if m in ("predictionDrift", "featureDrift"):
            return self._drift(check, ev, ctx, alpha)
        if m == "trafficShare":
            return self._traffic_share(check, ev.current, ctx, alpha)
        if m == "custom":
            return _custom(check, ev.current, ctx)
        return _inconclusive(check, f"unknown metric {m!r}")

    def _ratio_profile(
        self, check: Check, ev: Evidence, r0: float, complement: bool = False
    ) -> stats.RatioProfile:
        """The two-arm test of a rate check over the evidence's strata: of its events, or
        with ``complement`` of the trials that are not events (wrong predictions for
        accuracy, where lower is worse)."""
        e_c, e_s, shares = [], [], []
        for w in ev.strata:
            s_c, n_c = rate_counts(check, w.candidate)
            s_s, n_s = rate_counts(check, w.stable)
            if n_c > 0 and n_s > 0:
                e_c.append(n_c - s_c if complement else s_c)
                e_s.append(n_s - s_s if complement else s_s)
                shares.append(n_c / (n_c + n_s))
        return stats.ratio_profile(e_c, e_s, shares, r0, scale=self.ratio_scale)

    @staticmethod
    def _two_arm_diff(
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

    def _beyond_probability(
        self,
        outcome: _Outcome,
        up: stats.RatioProfile | None,
        down: stats.RatioProfile | None,
        stable: Est,
    ) -> float:
        """Posterior probability that a relative bound is broken (for leaning): the ratio
        beyond its limit, or beyond ``1 + d / p_s`` at stable's estimated rate."""
        if outcome.kind == "maxIncreaseRatio":
            return up.prob_above_ratio(outcome.limit, self.lean_prior_sd) if up is not None else 0.0
        profile = up if outcome.kind == "maxIncrease" else down
        rate = 1.0 - stable.est if outcome.kind == "maxDecrease" else stable.est
        if profile is None or not rate > 0.0:
            return 0.0
        d = abs(outcome.limit)
        return profile.prob_above_ratio(1.0 + d / rate, self.lean_prior_sd)

    # -- rates ---------------------------------------------------------------------------

    def _rate(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        m = check.metric
        window = ev.window
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
        # Relative bounds of a proportion with a concurrent stable arm: the two-arm test over
        # the rollout's steps (each with its own traffic share), one profile per direction.
        two_arm = (has_diff or has_ratio) and stable_ok and not f1 and concurrent(ev.current, ctx)
        up: stats.RatioProfile | None = None
        down: stats.RatioProfile | None = None
        if two_arm:
            if has_ratio or "maxIncrease" in kinds:
                r0 = next((1.0 + v for k, v in bounds if k == "maxIncreaseRatio"), 1.0)
                up = self._ratio_profile(check, ev, r0)
            if "maxDecrease" in kinds:
                down = self._ratio_profile(check, ev, 1.0, complement=True)
            # A difference is bounded twice, by the arms' own sequences and through the
            # ratio, and the two intervals intersected: each is better in its own regime
            # (the ratio when the candidate's share is small and stable's rate is precise;
            # the arms' sequences when stable's rate is rare and uncertain).
            needs_stable = has_diff
            objects = int(has_abs or has_diff) + int(has_diff) + int(up is not None) + int(down is not None)
        else:
            needs_stable = stable_ok and (has_diff or has_ratio)
            objects = int(has_abs or needs_stable) + int(needs_stable)
        point = _div(s_c / n_c, s_s / n_s) if stable_ok else math.nan

        def judged_at(level: float, fixed: bool = False) -> tuple[Est, Est | None, list[_Outcome]]:
            """Every bound judged with confidence sequences whose errors sum to ``level``
            (``fixed``: one-look likelihood intervals at ``level`` each, for leaning)."""
            a = level if fixed else level / max(objects, 1)
            cand = self._rate_est(m, s_c, n_c, a, fixed)
            stable = self._rate_est(m, s_s, n_s, a, fixed) if stable_ok else None
            if not two_arm:
                diff = _diff(cand, stable, a) if stable is not None and needs_stable else None
                ratio = _ratio_from_arms(cand, stable, a) if has_ratio and stable is not None else None
                return cand, stable, [_judge_bound(k, v, cand, diff, ratio, subject.unit) for k, v in bounds]
            outcomes = []
            for kind, v in bounds:
                diff = ratio = None
                if kind == "maxIncreaseRatio" and up is not None:
                    lo, hi = up.one_look(a) if fixed else up.cs(a)
                    # Open ends on the grid: a lower end at the limit already rejects it.
                    ratio = Est(point, lo, hi, a, exclusive=True)
                elif kind in ("maxIncrease", "maxDecrease") and stable is not None:
                    arms = _diff(cand, stable, a)
                    diff = self._two_arm_diff(
                        kind, up if kind == "maxIncrease" else down, cand, stable, a, fixed
                    )
                    diff = arms if diff is None else _intersect(arms, diff)
                outcomes.append(_judge_bound(kind, v, cand, diff, ratio, subject.unit))
            return cand, stable, outcomes

        cand, stable, outcomes = judged_at(alpha)
        p_lean = self.lean_threshold(ctx, ev.current)
        outcomes = self._lean(outcomes, lambda a: judged_at(a, True)[2], p_lean)
        if two_arm and p_lean is not None and stable is not None:
            outcomes = [
                o
                if o.failed or not o.relative
                else replace(o, leaning=self._beyond_probability(o, up, down, stable) >= p_lean)
                for o in outcomes
            ]
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

    def _quantile(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        window = ev.window
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

        tail_ratio = 1.0 + next((v for k, v in bounds if k == "maxIncreaseRatio"), 0.2)

        def lenient(level: float) -> list[_Outcome]:
            outs = judged_at(level, True)[2]
            if not stable_ok or hs is None:
                return outs
            # Coarse buckets rarely separate two brackets, so a rise leans when the candidate
            # has more mass than stable above the bucket bound below its estimate.
            heavier = self._heavier_tail(ev, ctx, hc, cand.est, level, tail_ratio)
            rising = ("maxIncrease", "maxIncreaseRatio")
            return [replace(o, failed=o.failed or (o.kind in rising and heavier)) for o in outs]

        cand, stable, outcomes = judged_at(alpha)
        # Quantile point estimates are interpolations inside coarse buckets: never lean on
        # them alone, whatever the step.
        outcomes = self._lean(outcomes, lenient, self.lean_threshold(ctx, ev.current, self.lean_alpha))
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

    def _drift(self, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
        window = ev.window
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
        log_bf = self._drift_log_e(check, ev, ctx)
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
        reason = _verdict_sentence(head, verdict, leaning, broken="exceeds", limit=f"maxPSI {max_psi:g}")
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

    def _heavier_tail(
        self,
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
            n_c, n_s = _num(hc.total), _num(hs.total)
            if n_c <= 0 or n_s <= 0:
                continue
            slow_c.append(_num(n_c - _num(hc.counts[i])))
            slow_s.append(_num(n_s - _num(hs.counts[i])))
            shares.append(n_c / (n_c + n_s))
        if not shares:
            return False
        profile = stats.ratio_profile(slow_c, slow_s, shares, ratio, scale=self.ratio_scale)
        return profile.prob_above(self.lean_prior_sd) >= self.lean_probability(level)

    def _drift_log_e(self, check: Check, ev: Evidence, ctx: JudgeContext) -> float:
        """Log e-value against "same distribution" over the evidence's strata (bins: the
        classes any step predicted; a feature histogram's buckets, in the steps that have
        the current window's buckets)."""
        per_c, per_s = [], []
        if check.metric == "predictionDrift":
            strata = [(w.candidate.predictions, stable_counts(w, ctx).predictions) for w in ev.strata]
            keys = sorted({k for c, s in strata for k in (*c, *s)})
            for c, s in strata:
                per_c.append([_num(c.get(k)) for k in keys])
                per_s.append([_num(s.get(k)) for k in keys])
        else:
            current = drift_counts(check, ev.current.candidate, stable_counts(ev.current, ctx))
            if isinstance(current, str):
                return 0.0
            for w in ev.strata:
                got = drift_counts(check, w.candidate, stable_counts(w, ctx))
                if not isinstance(got, str) and got[0] == current[0]:
                    per_c.append(got[1])
                    per_s.append(got[2])
        if not per_c:
            return 0.0
        return stats.stratified_drift_log_e(per_c, per_s, scale=self.ratio_scale)

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
        p_lean = self.lean_threshold(ctx, window)
        if leaning and p_lean is not None and p_lean > 0.5:
            level = 2.0 * (1.0 - p_lean)
            easy_lo, easy_hi = stats.likelihood_interval(n_c, n_c + n_s, level)
            leaning = easy_lo > w + d or easy_hi < w - d
        head = (
            f"candidate's share of requests {_pct(share)} ({_level(alpha)} CS {_pct(lo)}..{_pct(hi)}) "
            f"against its weight {_pct(w)}"
        )
        tol = f"the tolerated deviation {_pct(d)}"
        reason = _verdict_sentence(head, verdict, leaning, broken="deviates by more than", limit=tol)
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


def _verdict_sentence(head: str, verdict: Verdict, leaning: bool, *, broken: str, limit: str) -> str:
    """`head` (what was measured) followed by what the evidence says about `limit`."""
    if verdict is Verdict.FAIL:
        return f"{head} {broken} {limit}"
    if verdict is Verdict.PASS:
        return f"{head} is within {limit}"
    if leaning:
        return f"{head} {broken} {limit} but not proven yet"
    return f"{head} is not yet proven within {limit}"
