"""trafficShare: does the candidate receive the share of requests its weight says? (A
router that ignores its weights is caught here.) Skipped while the candidate is mirrored."""

from __future__ import annotations

from mesh_canary.checks.base import CheckKind, Judging
from mesh_canary.checks.bounds import inconclusive
from mesh_canary.checks.evidence import Evidence, min_samples, num
from mesh_canary.checks.words import confidence_level, pct, verdict_sentence
from mesh_canary.core import stats
from mesh_canary.core.model import Check
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    window = ev.current
    if ctx.mirrored:
        return CheckResult(
            name=check.name,
            metric=check.metric,
            verdict=Verdict.PASS,
            reason="not applicable: the candidate sees a mirrored copy of the traffic",
            bound="skipped while mirrored",
            enough_data=True,
        )
    n_c, n_s = num(window.candidate.requests), num(window.stable.requests)
    if n_c <= 0:
        return inconclusive(check, "no data for the candidate: no requests in this window")
    d = check.max_deviation
    if d is None:
        return inconclusive(check, "no maxDeviation to judge", samples=n_c, enough=True)
    w = min(max(ctx.candidate_share, 0.0), 1.0)
    share = n_c / (n_c + n_s)
    lo, hi = stats.rate_cs(n_c, n_c + n_s, alpha, judge.general_prior)
    need = min_samples(check, ctx)
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
    p_lean = judge.lean_threshold(ctx, window)
    if leaning and p_lean is not None and p_lean > 0.5:
        level = 2.0 * (1.0 - p_lean)
        easy_lo, easy_hi = stats.likelihood_interval(n_c, n_c + n_s, level)
        leaning = easy_lo > w + d or easy_hi < w - d
    head = (
        f"candidate's share of requests {pct(share)} ({confidence_level(alpha)} CS {pct(lo)}..{pct(hi)}) "
        f"against its weight {pct(w)}"
    )
    tol = f"the tolerated deviation {pct(d)}"
    reason = verdict_sentence(head, verdict, leaning, broken="deviates by more than", limit=tol)
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


KIND = CheckKind(
    name="trafficShare",
    title="traffic share",
    bounds=("maxDeviation",),
    signals=frozenset({"requests"}),
    evaluate=_evaluate,
    counts=lambda check, c: [("requests", c.requests)],
    uses_statistics=lambda ctx: not ctx.mirrored,
)
