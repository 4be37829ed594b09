"""predictionDrift and featureDrift: how far the candidate's distribution (of predicted
classes, or of one input feature's histogram) moved from stable's, as a PSI."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mesh_canary.checks.base import CheckKind, Judging
from mesh_canary.checks.bounds import inconclusive
from mesh_canary.checks.evidence import Evidence, min_samples, num, stable_counts
from mesh_canary.checks.words import bayes, confidence_level, verdict_sentence
from mesh_canary.core import stats
from mesh_canary.core.model import Check
from mesh_canary.core.observations import VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict

_PREDICTIONS = "predictionDrift"  # the other kind here judges a feature's histogram
Bins = tuple[list[str], list[float], list[float]] | str


def drift_counts(check: Check, candidate: VersionCounts, stable: VersionCounts) -> Bins:
    """``(bins, candidate counts, stable counts)`` for a drift check, or why there are none."""
    if check.metric == _PREDICTIONS:
        keys = sorted(set(candidate.predictions) | set(stable.predictions))
        return (
            keys,
            [num(candidate.predictions.get(k)) for k in keys],
            [num(stable.predictions.get(k)) for k in keys],
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
    return keys, [num(c) for c in hc.per_bucket()], [num(c) for c in hs.per_bucket()]


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    window = ev.window
    what = "prediction distribution" if check.metric == _PREDICTIONS else f"{check.feature} distribution"
    got = drift_counts(check, window.candidate, stable_counts(window, ctx))
    if isinstance(got, str):
        if "candidate" in got:
            return inconclusive(check, f"no data for the candidate: {got}")
        return inconclusive(check, got)
    _, xc, xs = got
    n_c, n_s = sum(xc), sum(xs)
    if n_c <= 0:
        return inconclusive(check, f"no data for the candidate: no observations of its {what}")
    if n_s <= 0:
        return inconclusive(check, f"no data for stable: no observations of its {what}", samples=n_c)
    max_psi = check.max_psi
    if max_psi is None:
        return inconclusive(check, "no maxPSI to judge", samples=n_c, enough=True)
    need = min_samples(check, ctx)
    enough = n_c >= need and n_s >= need
    point = stats.psi(xc, xs)
    lo, hi = stats.psi_bounds(xc, xs, alpha, prior=judge.general_prior)
    log_bf = _drift_log_e(judge, check, ev, ctx)
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
    head = (
        f"{what} PSI {point:.3f} ({confidence_level(alpha)} CS {lo:.3f}..{hi:.3f}; "
        f"Bayes factor for a difference {bayes(log_bf)})"
    )
    reason = verdict_sentence(head, verdict, leaning, broken="exceeds", limit=f"maxPSI {max_psi:g}")
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


def _drift_log_e(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext) -> float:
    """Log e-value against "same distribution" over the evidence's strata (bins: the
    classes any step predicted; a feature histogram's buckets, in the steps that have
    the current window's buckets)."""
    per_c, per_s = [], []
    if check.metric == _PREDICTIONS:
        strata = [(w.candidate.predictions, stable_counts(w, ctx).predictions) for w in ev.strata]
        keys = sorted({k for c, s in strata for k in (*c, *s)})
        for c, s in strata:
            per_c.append([num(c.get(k)) for k in keys])
            per_s.append([num(s.get(k)) for k in keys])
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
    return stats.stratified_drift_log_e(per_c, per_s, scale=judge.ratio_scale)


def _feature_name(check: Mapping[str, Any]) -> str:
    feature = check.get("feature")
    return f"featureDrift-{feature}" if isinstance(feature, str) else "featureDrift"


def _feature_counts(check: Check, counts: VersionCounts) -> list[tuple[str, float]]:
    h = counts.features.get(check.feature or "")
    return [(f"{check.feature} bucket", c) for c in (h.counts if h is not None else ())]


PREDICTION = CheckKind(
    name=_PREDICTIONS,
    title="prediction drift",
    bounds=("maxPSI",),
    signals=frozenset({"predictions"}),
    evaluate=_evaluate,
    counts=lambda check, c: [("predictions", v) for v in c.predictions.values()],
)

FEATURE = CheckKind(
    name="featureDrift",
    title="feature drift",
    bounds=("maxPSI",),
    qualifiers=("feature",),
    required={"feature": "featureDrift checks judge one input feature"},
    signals=frozenset({"features"}),
    evaluate=_evaluate,
    counts=_feature_counts,
    default_name=_feature_name,
)
