"""Judging bounds against estimates with confidence sequences, and the sentence a person reads.

Every check kind's evaluation ends here: each bound (``max``, ``min``, ``maxIncrease``,
``maxDecrease``, ``maxIncreaseRatio``) is judged on an estimate with its confidence sequence,
and :func:`combine` makes one verdict of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mesh_canary.checks.words import FORMATS, Format, confidence_level, times
from mesh_canary.core.frozen import replace
from mesh_canary.core.model import Check
from mesh_canary.core.verdicts import CheckResult, Verdict

INF = math.inf


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
class Outcome:
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


def with_leaning(o: Outcome, leaning: bool) -> Outcome:
    """``o`` leaning (or not) towards failure: itself when it already does (speed only)."""
    return o if o.leaning == leaning else replace(o, leaning=leaning)


def bounds_of(check: Check) -> list[tuple[str, float]]:
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


def judge_bound(
    kind: str,
    limit: float,
    cand: Est,
    diff: Est | None,
    ratio: Est | None,
    unit: str,
) -> Outcome:
    """One bound: failed (the sequence lies wholly beyond it), passed (wholly within), or
    neither; ``leaning`` starts as "the point estimate is beyond it"."""
    f = FORMATS[unit]
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
        e, quantity, at, text = ratio, "candidate / stable", 1.0 + limit, times(1.0 + limit)
        words = f"<= stable x {1.0 + limit:.3g}"
    relative = kind not in ("max", "min")
    if e is None:  # nothing to compare with (no data for stable)
        return Outcome(kind, relative, False, False, False, quantity, None, at, words, text)
    if kind in ("min", "maxDecrease"):  # the quantity must stay at or above `at`
        failed, passed, beyond = e.hi < at, e.lo >= at, e.est < at
    else:  # at or below `at`; a bracket's exclusive lower end equal to `at` already breaks it
        failed = e.lo >= at if e.exclusive else e.lo > at
        passed, beyond = e.hi <= at, e.est > at
    return Outcome(kind, relative, failed, passed, beyond, quantity, e, at, words, text)


def difference(c: Est, s: Est, alpha: float) -> Est:
    return Est(c.est - s.est, c.lo - s.hi, c.hi - s.lo, alpha, c.exclusive or s.exclusive)


def intersect(x: Est, y: Est) -> Est:
    """Two valid intervals for the same quantity (their budgets already split): both
    cover, so their intersection does. An end taken from an open interval stays open."""
    lo_from_y = y.lo > x.lo or (y.lo == x.lo and y.exclusive)
    return Est(x.est, max(x.lo, y.lo), min(x.hi, y.hi), x.alpha, y.exclusive if lo_from_y else x.exclusive)


def div(x: float, y: float) -> float:
    if y > 0:
        return x / y
    return INF if x > 0 else math.nan


def ratio_from_arms(c: Est, s: Est, alpha: float) -> Est:
    return Est(
        div(c.est, s.est),
        div(c.lo, s.hi) if c.lo > 0 else 0.0,
        div(c.hi, s.lo),
        alpha,
        c.exclusive or s.exclusive,
    )


@dataclass(frozen=True)
class Subject:
    """What a verdict is about, for sentences: e.g. 'error rate', 'p99 latency'."""

    label: str
    unit: str  # rate | ms | value
    samples_word: str  # requests | labelled predictions | ...


# Which bound an inconclusive verdict talks about: the most telling one.
_SHOWN_FIRST: tuple[Callable[[Outcome], bool], ...] = (
    lambda o: o.failed,
    lambda o: o.leaning,
    lambda o: o.beyond,
    lambda o: o.relative and not o.passed,
    lambda o: not o.passed,
)


def combine(
    check: Check,
    subject: Subject,
    outcomes: list[Outcome],
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
    f = FORMATS[subject.unit]
    verdict, shown = _verdict(outcomes, enough)
    leaning = verdict is Verdict.INCONCLUSIVE and any(o.leaning or o.failed for o in outcomes)

    # The sentence: the values, then what the shown bound's sequence says.
    values = f"{subject.label} {f(cand.est)}"
    if stable is not None and relative:
        values += f" vs stable {f(stable.est)}"
    e = shown.est
    if e is None:
        detail = f"no data for stable to compare with ({shown.words})"
    else:
        detail = _detail(shown, e, verdict, f, len(outcomes))
    reason = f"{values}: {detail}" if shown.relative or e is None else f"{values} {detail}"
    if not enough and verdict is not Verdict.FAIL:
        have = f"{n_c:.0f}" if not relative or n_s is None else f"{n_c:.0f} and {n_s:.0f}"
        reason += f"; waiting for {need} {subject.samples_word} per version (have {have})"
    for note in notes:
        reason += f"; {note}"

    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=verdict,
        reason=reason,
        estimate=finite_or_none(e.est if e else cand.est),
        stable_estimate=finite_or_none(stable.est) if stable is not None else None,
        lower=finite_or_none(e.lo) if e else None,
        upper=finite_or_none(e.hi) if e else None,
        bound=shown.words,
        quantity=f"{shown.quantity} ({subject.label})",
        samples=n_c,
        enough_data=enough,
        leaning_fail=leaning,
    )


def _verdict(outcomes: list[Outcome], enough: bool) -> tuple[Verdict, Outcome]:
    """The verdict of every bound together, and the bound its sentence talks about."""
    failing = [o for o in outcomes if o.failed and (enough or not o.relative)]
    if failing:
        return Verdict.FAIL, failing[0]
    if enough and outcomes and all(o.passed for o in outcomes):
        return Verdict.PASS, next((o for o in outcomes if o.relative), outcomes[0])
    shown = next((o for wanted in _SHOWN_FIRST for o in outcomes if wanted(o)), outcomes[0])
    return Verdict.INCONCLUSIVE, shown


_WHAT = {"maxIncrease": "difference ", "maxDecrease": "difference ", "maxIncreaseRatio": "ratio "}


def _detail(shown: Outcome, e: Est, verdict: Verdict, f: Format, bounds: int) -> str:
    """What the shown bound's confidence sequence says about it."""
    qunit = times if shown.kind == "maxIncreaseRatio" else f
    signed = shown.kind in ("maxIncrease", "maxDecrease")
    cs = f"{confidence_level(e.alpha)} CS {qunit(e.lo, signed)}..{qunit(e.hi, signed)}"
    head = f"{_WHAT.get(shown.kind, '')}{qunit(e.est, signed)} ({cs})" if shown.relative else f"({cs})"
    tol = "the tolerated" if shown.relative else "the limit"
    limit = f"{tol} {shown.limit_text}"
    if verdict is Verdict.FAIL:
        verb = "is below" if shown.kind in ("min", "maxDecrease") else "exceeds"
        return f"{head} {verb} {limit}"
    if verdict is Verdict.PASS:
        return f"{head} is within {limit}" + (", as is every other bound" if bounds > 1 else "")
    if shown.failed:
        return f"{head} is beyond {limit}, proven but short of the minimum samples"
    if shown.leaning:
        return f"{head} is beyond {limit} but not proven yet"
    if shown.beyond:
        return f"{head} is beyond {limit} on evidence too weak to hold the step"
    return f"{head} is not yet proven within {limit}"


def finite_or_none(x: float) -> float | None:
    """Results are stored as JSON (a custom resource's status): no NaN, no infinity. An
    unbounded end is None; the reason says 'inf'."""
    return x if math.isfinite(x) else None


def inconclusive(check: Check, reason: str, samples: float = 0.0, enough: bool = False) -> CheckResult:
    return CheckResult(
        name=check.name,
        metric=check.metric,
        verdict=Verdict.INCONCLUSIVE,
        reason=reason,
        samples=samples,
        enough_data=enough,
    )
