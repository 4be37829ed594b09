"""Anytime-valid building blocks for judging a candidate: pure functions, numpy/scipy only.

Every interval here is a *confidence sequence*: it covers the true value at every sample
size simultaneously with probability at least ``1 - alpha``, so it may be recomputed at
every analysis tick without inflating the error rate (docs/statistics.md has the sources).

- :func:`rate_cs`: a binomial rate, from the Beta-Binomial mixture martingale of Howard,
  Ramdas, McAuliffe and Sekhon (2021). Scalar, pure ``math`` (a few microseconds);
  :func:`rate_cs_array` is the same thing vectorised with numpy.
- :func:`ratio_cs`: the ratio of two arms' rates from the conditional share of events
  (Lindon & Malek 2022); :func:`difference_cs` the difference from the two arms' sequences.
- :func:`ratio_profile`: the same two-arm test over several strata (canary steps) with a
  different traffic share in each and one common ratio, as a grid mixture, so evidence
  accumulates over a whole rollout; :func:`stratified_drift_log_e` its multinomial form.
- :func:`quantile_bracket`: a quantile bracketed between histogram bucket bounds.
- :func:`psi`, :func:`psi_bounds`, :func:`multinomial_log_bayes_factor`: distribution drift.
- :func:`likelihood_interval`: the one exception, a fixed-sample (one-look) interval, used
  only to say whether evidence *leans* towards failure, never to fail.

Nothing here knows about policies or checks, so other judges (a Flagger- or Kayenta-style
rule for the benchmark) can reuse the pieces they need.
"""

from __future__ import annotations

import functools
import math
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
import numpy.typing as npt
from scipy.special import betaln, ndtri

FloatArray = npt.NDArray[np.float64]

INF = math.inf
_NEWTON_MAX_ITER = 100
_NEWTON_TOL = 1e-12
_MIN_COUNT = 1e-9


@dataclass(frozen=True)
class BetaPrior:
    """The mixing distribution Beta(a, b) of a mixture martingale.

    The prior never affects validity, only where the sequence is tightest.
    """

    a: float
    b: float


# Error rates, wrong-prediction rates and latency tail shares: mostly 0.05%..10%.
# Beta(0.5, 30) (mean 1.6%, Jeffreys-like near zero) keeps the interval within ~5% of the
# width of the best Beta prior for rates 0.1%..3% at n = 300..1e5, and within ~7% at 10%,
# while still reacting quickly to gross regressions (a 30% rate costs ~30% extra width).
SMALL_RATE_PRIOR = BetaPrior(0.5, 30.0)
# Rates anywhere in (0, 1): precision, recall, F1's share of true positives, traffic share.
GENERAL_PRIOR = BetaPrior(1.0, 1.0)
# The conditional share of events from the candidate (two-arm test). A uniform mixture was
# as fast as or faster than Jeffreys and Beta(c*rho, c*(1-rho)) mixtures for ratios 2..50.
SHARE_PRIOR = BetaPrior(1.0, 1.0)
# A bin with no observations would make PSI infinite; shares are floored at this value.
PSI_FLOOR = 1e-4
# The stratified two-arm test mixes over a grid of log rate ratios spaced RATIO_GRID_STEP
# apart, RATIO_GRID_SPAN either side of the null, with a geometric prior on the distance
# from the null: mean distance RATIO_PRIOR_SCALE in log R (a ratio 1.65x beyond the null).
# The benchmark (docs/benchmarks.md) chose the scale; it changes speed, never validity.
RATIO_GRID_STEP = 0.04
RATIO_GRID_SPAN = 7.0
RATIO_PRIOR_SCALE = 0.5


# ---------------------------------------------------------------------------------------
# One binomial rate


def _betaln(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


@functools.lru_cache(maxsize=64)
def _prior_betaln(a: float, b: float) -> float:
    """:func:`_betaln` of a prior's parameters, remembered (a judge has a few priors)."""
    return _betaln(a, b)


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0.0 else x * math.log(y)


def _clean_counts(successes: float, trials: float) -> tuple[float, float]:
    """Counts from Prometheus are floats (extrapolated); clip them into 0 <= S <= n.
    NaN, infinite and vanishing (< 1e-9, float dust) counts are no counts."""
    n = float(trials) if _MIN_COUNT <= trials < INF else 0.0
    s = float(successes) if _MIN_COUNT <= successes < INF else 0.0
    return min(s, n), n


def _float_list(x: object) -> TypeGuard[list[float]]:
    """A list of Python floats (the fast paths' input; anything else goes through numpy)."""
    return type(x) is list and all(type(v) is float for v in x)


def _clean_floats(counts: list[float]) -> list[float]:
    """:func:`_clean_array` on a list of floats, as floats."""
    return [x if _MIN_COUNT <= x < INF else 0.0 for x in counts]


def _clean_array(counts: npt.ArrayLike) -> FloatArray:
    x = np.asarray(counts, dtype=np.float64)
    out: FloatArray = np.where(np.isfinite(x) & (x >= _MIN_COUNT), x, 0.0)
    return out


def log_mixture_martingale(p: float, successes: float, trials: float, prior: BetaPrior) -> float:
    """``log M_n(p)``: the Beta-Binomial mixture over the likelihood at ``p``.

    ``M_n(p) = B(a + S, b + n - S) / B(a, b) / (p^S (1 - p)^(n - S))`` is a nonnegative
    martingale with initial value 1 when the true rate is ``p``; by Ville's inequality it
    exceeds ``1/alpha`` at any time with probability at most ``alpha``.
    """
    s, n = _clean_counts(successes, trials)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a rate must lie in [0, 1], got {p}")
    log_marginal = _betaln(prior.a + s, prior.b + n - s) - _betaln(prior.a, prior.b)
    if (p == 0.0 and s > 0) or (p == 1.0 and s < n):
        return INF
    return log_marginal - _xlogy(s, p) - _xlogy(n - s, 1.0 - p)


def _radius(s: float, n: float, alpha: float, prior: BetaPrior) -> float:
    """The KL radius r/n: the sequence is ``{p : n * kl(S/n, p) < r}``.

    ``log M_n(p) = log m - l(p_hat) + n kl(p_hat, p)`` where ``m`` is the marginal
    likelihood and ``l`` the log-likelihood, so ``M_n(p) < 1/alpha`` iff
    ``n kl(p_hat, p) < log(1/alpha) + l(p_hat) - log m``.
    """
    q = s / n
    log_lik_max = _xlogy(s, q) + _xlogy(n - s, 1.0 - q)
    log_marginal = _betaln(prior.a + s, prior.b + n - s) - _prior_betaln(prior.a, prior.b)
    # Never below 0: at huge n the difference of two huge logs can come out a hair negative.
    return max((math.log(1.0 / alpha) + log_lik_max - log_marginal) / n, 0.0)


def _upper_root(q: float, rn: float) -> float:
    """The p > q with kl(q, p) = rn, by Newton's method in t = log(1 - p).

    kl is convex and decreasing in t on this side, so Newton's method started at a point
    known to lie beyond the root converges monotonically and never overshoots.
    """
    if q >= 1.0:
        return 1.0
    # Start 1: kl(q, p) >= q log q + (1 - q)(log(1 - q) - t), zero at t_a (always valid).
    t = math.log1p(-q) + (_xlogy(q, q) - rn) / (1.0 - q)
    # Start 2: kl(q, p) >= (p - q)^2 / (2p) for p >= q; tighter when the root is near q.
    p_b = q + rn + math.sqrt(2.0 * q * rn + rn * rn)
    if p_b < 1.0:
        t = max(t, math.log1p(-p_b))
    one_minus_q, log1p_minus_q = 1.0 - q, math.log1p(-q)  # loop invariants (speed only)
    for _ in range(_NEWTON_MAX_ITER):
        p = -math.expm1(t)
        if p <= q:
            break
        h = (0.0 if q == 0.0 else q * math.log(q / p)) + one_minus_q * (log1p_minus_q - t) - rn
        slope = (q - p) / p
        step = h / slope
        t -= step
        if abs(step) <= _NEWTON_TOL * max(1.0, abs(t)):
            break
    return min(max(-math.expm1(t), q), 1.0)


def _lower_root(q: float, rn: float) -> float:
    """The p < q with kl(q, p) = rn, by Newton's method in u = log p (as above)."""
    if q <= 0.0:
        return 0.0
    # Start 1: kl(q, p) >= q (log q - u) + (1 - q) log(1 - q), zero at u_a (always valid).
    u = math.log(q) + (_xlogy(1.0 - q, 1.0 - q) - rn) / q
    # Start 2: kl(q, p) >= (q - p)^2 / (2q) for p <= q.
    p_b = q - math.sqrt(2.0 * q * rn)
    if p_b > 0.0:
        u = max(u, math.log(p_b))
    if u < -745.0:  # exp underflows: the root is 0 to double precision
        return 0.0
    log_q, one_minus_q = math.log(q), 1.0 - q  # loop invariants (speed only)
    for _ in range(_NEWTON_MAX_ITER):
        p = math.exp(u)
        if p >= q:
            break
        h = (
            q * (log_q - u)
            + (0.0 if one_minus_q == 0.0 else one_minus_q * math.log(one_minus_q / (1.0 - p)))
            - rn
        )
        slope = (p - q) / (1.0 - p)
        step = h / slope
        u -= step
        if abs(step) <= _NEWTON_TOL * max(1.0, abs(u)):
            break
    return min(max(math.exp(u), 0.0), q)


def rate_cs(
    successes: float, trials: float, alpha: float, prior: BetaPrior = SMALL_RATE_PRIOR
) -> tuple[float, float]:
    """Time-uniform ``1 - alpha`` confidence sequence ``(lower, upper)`` for a binomial rate.

    With no trials the interval is (0, 1). Counts may be non-integer (Prometheus
    ``increase()``); they are clipped into ``0 <= successes <= trials``.
    """
    # A judge asks for the same sequence several times a tick (the same counts, raw and
    # discounted, at the same level): remembered, a pure function of its arguments.
    key = (successes, trials, alpha, prior.a, prior.b)
    known = _RATE_CS_SEEN.get(key)
    if known is None:
        known = _rate_cs(successes, trials, alpha, prior)
        if len(_RATE_CS_SEEN) >= _SEEN_MAX:
            _RATE_CS_SEEN.clear()
        _RATE_CS_SEEN[key] = known
    return known


_SEEN_MAX = 4096
_RATE_CS_SEEN: dict[tuple[float, float, float, float, float], tuple[float, float]] = {}


def _rate_cs(successes: float, trials: float, alpha: float, prior: BetaPrior) -> tuple[float, float]:
    _check_alpha(alpha)
    s, n = _clean_counts(successes, trials)
    if n <= 0.0:
        return 0.0, 1.0
    rn = _radius(s, n, alpha, prior)
    q = s / n
    lower = 0.0 if s <= 0.0 else _lower_root(q, rn)
    upper = 1.0 if s >= n else _upper_root(q, rn)
    return lower, upper


def rate_cs_array(
    successes: npt.ArrayLike, trials: npt.ArrayLike, alpha: float, prior: BetaPrior = SMALL_RATE_PRIOR
) -> tuple[FloatArray, FloatArray]:
    """:func:`rate_cs` for arrays of counts at once: the same roots by the same monotone
    Newton iterations, vectorised with numpy (scipy's ``betaln`` for the marginal)."""
    _check_alpha(alpha)
    if LIBM_EXACT and _small_floats(successes) and _small_floats(trials) and len(successes) == len(trials):
        got = _rate_cs_scalars(successes.tolist(), trials.tolist(), alpha, prior)
        if got is not None:
            return np.array(got[0], dtype=np.float64), np.array(got[1], dtype=np.float64)
    n = _clean_array(trials)
    s = np.minimum(_clean_array(successes), n)
    s, n = np.broadcast_arrays(s, n)
    has = n > 0
    n1 = np.where(has, n, 1.0)
    q = s / n1
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lik_max = np.where(s > 0, s * np.log(q), 0.0) + np.where(n - s > 0, (n - s) * np.log1p(-q), 0.0)
        log_marg = betaln(prior.a + s, prior.b + n - s) - betaln(prior.a, prior.b)
        rn = np.maximum((math.log(1.0 / alpha) + log_lik_max - log_marg) / n1, 0.0)
        # Interior points only: the ends at q = 0 or 1 are fixed below.
        qi = np.clip(q, 1e-300, 1.0 - 1e-16)
        xlogx = qi * np.log(qi)
        ylogy = (1.0 - qi) * np.log1p(-qi)
        # Upper root in t = log(1 - p), from the two valid starts (see _upper_root).
        t = np.log1p(-qi) + (xlogx - rn) / (1.0 - qi)
        p_b = qi + rn + np.sqrt(2.0 * qi * rn + rn * rn)
        t = np.where(p_b < 1.0, np.maximum(t, np.log1p(-np.minimum(p_b, 1.0 - 1e-16))), t)
        # Lower root in u = log p (see _lower_root).
        u = np.log(qi) + (ylogy - rn) / qi
        p_c = qi - np.sqrt(2.0 * qi * rn)
        u = np.where(p_c > 0.0, np.maximum(u, np.log(np.maximum(p_c, 1e-300))), u)
        u = np.maximum(u, -745.0)
        # Loop invariants, computed once (speed only: the same values as inline).
        one_minus_qi, log1p_minus_qi, log_qi = 1.0 - qi, np.log1p(-qi), np.log(qi)
        for _ in range(_NEWTON_MAX_ITER):
            p_up = -np.expm1(t)
            h_up = qi * np.log(qi / p_up) + one_minus_qi * (log1p_minus_qi - t) - rn
            step_t = np.where(p_up > qi, h_up * p_up / (qi - p_up), 0.0)
            t = t - step_t
            p_lo = np.exp(u)
            h_lo = qi * (log_qi - u) + one_minus_qi * np.log(one_minus_qi / (1.0 - p_lo)) - rn
            step_u = np.where(p_lo < qi, h_lo * (1.0 - p_lo) / (p_lo - qi), 0.0)
            u = u - step_u
            if np.all(np.abs(step_t) <= _NEWTON_TOL * np.maximum(1.0, np.abs(t))) and np.all(
                np.abs(step_u) <= _NEWTON_TOL * np.maximum(1.0, np.abs(u))
            ):
                break
        upper = np.clip(-np.expm1(t), q, 1.0)
        lower = np.clip(np.exp(u), 0.0, q)
    lower = np.where(has & (s > 0), lower, 0.0)
    upper = np.where(has & (s < n), upper, 1.0)
    return lower.astype(np.float64), upper.astype(np.float64)


# Speed only. numpy's float64 log, log1p, exp and expm1 are the C library's on x86-64
# without AVX-512 (numpy dispatches its own SIMD versions only there): then the same
# operations on Python floats give the very same bits, and small arrays run faster that
# way than through numpy's per-call overhead. Elsewhere the numpy code runs as it is.
def _cpu_features() -> dict[str, bool]:
    umath = getattr(getattr(np, "_core", None), "_multiarray_umath", None)
    return dict(getattr(umath, "__cpu_features__", {}))


_FEATURES = _cpu_features()
LIBM_EXACT = (
    platform.machine().lower() in ("x86_64", "amd64")
    and _FEATURES.get("AVX2", False)
    and not any(_FEATURES.get(f, False) for f in ("AVX512F", "X86_V4"))
)
_SCALAR_MAX = 64  # longer arrays: numpy is faster


def _small_floats(x: object) -> TypeGuard[FloatArray]:
    return isinstance(x, np.ndarray) and x.dtype == np.float64 and x.ndim == 1 and x.size <= _SCALAR_MAX


def _max(a: float, b: float) -> float:
    """``np.maximum(a, b)`` (``b`` never NaN here)."""
    return b if b > a else a


def _clip(x: float, lo: float, hi: float) -> float:
    """``np.clip(x, lo, hi)`` for one float: the same comparisons, so the same zero's sign."""
    m = x if x != x or x > lo else lo
    return m if m != m or m < hi else hi


def _rate_cs_scalars(
    successes: list[float], trials: list[float], alpha: float, prior: BetaPrior
) -> tuple[list[float], list[float]] | None:
    """:func:`rate_cs_array` on Python floats (see :data:`LIBM_EXACT`): every element gets
    the very operations of the numpy code in the same order, and the loop stops at the same
    iteration (when every element has converged). None where numpy would meet a NaN, an
    infinity or a division by zero: the caller then runs the numpy code."""
    k = len(trials)
    n = [x if _MIN_COUNT <= x < INF else 0.0 for x in trials]
    s = [x if _MIN_COUNT <= x < INF else 0.0 for x in successes]
    s = [min(a, b) for a, b in zip(s, n, strict=True)]
    try:
        log_marg0 = float(betaln(prior.a, prior.b))
        marg = betaln(
            np.array([prior.a + x for x in s]), np.array([prior.b + y - x for x, y in zip(s, n, strict=True)])
        ).tolist()
        log_alpha = math.log(1.0 / alpha)
        qs, rns, ts, us = [], [], [], []
        for i in range(k):
            si, ni = s[i], n[i]
            n1 = ni if ni > 0 else 1.0
            q = si / n1
            lik = (si * math.log(q) if si > 0 else 0.0) + ((ni - si) * math.log1p(-q) if ni - si > 0 else 0.0)
            rn = _max((log_alpha + lik - (marg[i] - log_marg0)) / n1, 0.0)
            qi = _clip(q, 1e-300, 1.0 - 1e-16)
            xlogx = qi * math.log(qi)
            ylogy = (1.0 - qi) * math.log1p(-qi)
            t = math.log1p(-qi) + (xlogx - rn) / (1.0 - qi)
            p_b = qi + rn + math.sqrt(2.0 * qi * rn + rn * rn)
            if p_b < 1.0:
                t = _max(t, math.log1p(-min(p_b, 1.0 - 1e-16)))
            u = math.log(qi) + (ylogy - rn) / qi
            p_c = qi - math.sqrt(2.0 * qi * rn)
            if p_c > 0.0:
                u = _max(u, math.log(_max(p_c, 1e-300)))
            u = _max(u, -745.0)
            qs.append(qi)
            rns.append(rn)
            ts.append(t)
            us.append(u)
        one_minus = [1.0 - qi for qi in qs]
        log1p_minus = [math.log1p(-qi) for qi in qs]
        log_q = [math.log(qi) for qi in qs]
        for _ in range(_NEWTON_MAX_ITER):
            done = True
            for i in range(k):
                qi, t, u = qs[i], ts[i], us[i]
                p_up = -math.expm1(t)
                step_t = 0.0
                if p_up > qi:
                    h_up = qi * math.log(qi / p_up) + one_minus[i] * (log1p_minus[i] - t) - rns[i]
                    step_t = h_up * p_up / (qi - p_up)
                t = t - step_t
                p_lo = math.exp(u)
                step_u = 0.0
                if p_lo < qi:
                    h_lo = qi * (log_q[i] - u) + one_minus[i] * math.log(one_minus[i] / (1.0 - p_lo)) - rns[i]
                    step_u = h_lo * (1.0 - p_lo) / (p_lo - qi)
                u = u - step_u
                ts[i], us[i] = t, u
                if not (
                    abs(step_t) <= _NEWTON_TOL * _max(1.0, abs(t))
                    and abs(step_u) <= _NEWTON_TOL * _max(1.0, abs(u))
                ):
                    done = False
            if done:
                break
        lower, upper = [], []
        for i in range(k):
            t, u, si, ni = ts[i], us[i], s[i], n[i]
            if t != t or u != u:
                return None
            q = si / (ni if ni > 0 else 1.0)
            lower.append(_clip(math.exp(u), 0.0, q) if ni > 0 and si > 0 else 0.0)
            upper.append(_clip(-math.expm1(t), q, 1.0) if ni > 0 and si < ni else 1.0)
    except (ArithmeticError, ValueError):
        return None
    return lower, upper


def likelihood_interval(successes: float, trials: float, alpha: float) -> tuple[float, float]:
    """The fixed-sample likelihood-ratio interval ``{p : n kl(p_hat, p) <= z^2 / 2}``, with
    ``z`` the two-sided normal quantile at ``alpha``.

    NOT anytime-valid: it is valid for one look at a fixed sample size. The judge uses it
    only to say whether the evidence *leans* towards failure (hold or advance), never to
    fail a check.
    """
    _check_alpha(alpha)
    s, n = _clean_counts(successes, trials)
    if n <= 0.0:
        return 0.0, 1.0
    z = _two_sided_z(alpha)
    rn = 0.5 * z * z / n
    q = s / n
    lower = 0.0 if s <= 0.0 else _lower_root(q, rn)
    upper = 1.0 if s >= n else _upper_root(q, rn)
    return lower, upper


@functools.lru_cache(maxsize=1024)
def _two_sided_z(alpha: float) -> float:
    """The two-sided normal quantile at ``alpha`` (a judge asks for a few levels, many times)."""
    return float(ndtri(1.0 - alpha / 2.0))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha}")


# ---------------------------------------------------------------------------------------
# Two arms


def null_share(rho: float, ratio: float = 1.0) -> float:
    """The share of events that come from the candidate when ``p_c = ratio * p_s``.

    With a share ``rho`` of the traffic, an event (an error, say) came from the candidate
    with probability ``theta = rho p_c / (rho p_c + (1 - rho) p_s)``; under ``p_c = R p_s``
    this is ``rho R / (rho R + 1 - rho)``, which rises with R: so the null "``p_c <= R p_s``"
    is ``theta <= null_share(rho, R)`` and its least favourable point is the boundary.
    """
    if not 0.0 < rho < 1.0:
        raise ValueError(f"the candidate's share must lie strictly between 0 and 1, got {rho}")
    if ratio == INF:
        return 1.0
    return rho * ratio / (rho * ratio + 1.0 - rho)


def share_to_ratio(theta: float, rho: float) -> float:
    """Inverse of :func:`null_share`: the rate ratio ``p_c / p_s`` that gives share ``theta``."""
    if theta >= 1.0:
        return INF
    return theta * (1.0 - rho) / (rho * (1.0 - theta))


def two_arm_log_bayes_factor(
    events_candidate: float,
    events_stable: float,
    rho: float,
    ratio: float = 1.0,
    prior: BetaPrior = SHARE_PRIOR,
) -> float:
    """Log Bayes factor against ``p_c = ratio * p_s`` from where the events came from.

    Conditional on an event, it is the candidate's with probability ``theta``; under the
    null ``theta = null_share(rho, ratio)``. A Beta mixture over ``theta`` against the null
    likelihood is a test martingale (Lindon & Malek 2022): rejecting when it reaches
    ``1/alpha`` is anytime-valid. It equals ``log M_E(theta_0)`` of :func:`log_mixture_martingale`.
    """
    e_c, _ = _clean_counts(events_candidate, events_candidate)
    e_s, _ = _clean_counts(events_stable, events_stable)
    return log_mixture_martingale(null_share(rho, ratio), e_c, e_c + e_s, prior)


def ratio_cs(
    events_candidate: float,
    events_stable: float,
    rho: float,
    alpha: float,
    prior: BetaPrior = SHARE_PRIOR,
) -> tuple[float, float]:
    """Confidence sequence for the rate ratio ``p_c / p_s`` from the two-arm share test.

    It is the set of ratios R whose Bayes factor stays below ``1/alpha``: the confidence
    sequence for theta mapped through :func:`share_to_ratio`. So "``p_c <= R p_s``" is
    rejected (the candidate is proven worse than tolerated) exactly when the lower end
    exceeds R, and proven within tolerance when the upper end is at most R.
    """
    e_c, _ = _clean_counts(events_candidate, events_candidate)
    e_s, _ = _clean_counts(events_stable, events_stable)
    lo, hi = rate_cs(e_c, e_c + e_s, alpha, prior)
    return share_to_ratio(lo, rho), share_to_ratio(hi, rho)


def difference_cs(
    successes_candidate: float,
    trials_candidate: float,
    successes_stable: float,
    trials_stable: float,
    alpha: float,
    prior: BetaPrior = SMALL_RATE_PRIOR,
) -> tuple[float, float]:
    """Confidence sequence for ``p_c - p_s``: each arm's sequence at ``alpha / 2``."""
    lo_c, hi_c = rate_cs(successes_candidate, trials_candidate, alpha / 2.0, prior)
    lo_s, hi_s = rate_cs(successes_stable, trials_stable, alpha / 2.0, prior)
    return lo_c - hi_s, hi_c - lo_s


# ---------------------------------------------------------------------------------------
# Two arms over several strata (canary steps): one common ratio, a grid mixture


@dataclass(frozen=True)
class RatioProfile:
    """The two-arm evidence about a common rate ratio ``R = p_c / p_s`` over strata.

    Stratum k (a canary step) sends a share ``rho_k`` of the traffic to the candidate; an
    event there is the candidate's with probability ``theta_k(R) = rho_k R / (rho_k R + 1 -
    rho_k)``. ``log_lik`` is the log-likelihood of where the events came from on the grid
    ``log_r`` (``null_index`` is the null ratio ``r0``). ``log_e_above[i]`` is the log of a
    mixture over grid ratios ``R_j >= R_i`` of the likelihood ratio against ``R_i``: under
    any truth with ``R <= R_i`` in every stratum each event's ratio has expectation at most
    1, so this is a test supermartingale for "``R <= R_i``" however the shares change, and
    it stays one across strata (Lindon & Malek 2022; Ville's inequality). ``log_e_below`` is
    the mirror image for "``R >= R_i``".
    """

    log_r: FloatArray
    log_lik: FloatArray
    log_e_above: FloatArray
    log_e_below: FloatArray
    null_index: int
    events: float

    @property
    def r0(self) -> float:
        return math.exp(float(self.log_r[self.null_index]))

    @property
    def estimate(self) -> float:
        """The maximum-likelihood common ratio on the grid (NaN without events)."""
        if self.events <= 0:
            return math.nan
        return self._end(int(np.argmax(self.log_lik)))

    def _end(self, i: int) -> float:
        if i <= 0:
            return 0.0
        if i >= len(self.log_r) - 1:
            return INF
        return math.exp(float(self.log_r[i]))

    @property
    def log_e_worse(self) -> float:
        """Log e-value against "the candidate's ratio is at most ``r0``"."""
        return float(self.log_e_above[self.null_index])

    @property
    def log_e_better(self) -> float:
        """Log e-value against "the candidate's ratio is at least ``r0``"."""
        return float(self.log_e_below[self.null_index])

    @property
    def log_lr(self) -> float:
        """``log L(R_hat) - log L(r0)``: the one-look likelihood-ratio statistic (>= 0)."""
        return float(np.max(self.log_lik) - self.log_lik[self.null_index])

    def cs(self, alpha: float) -> tuple[float, float]:
        """The time-uniform ``1 - alpha`` sequence as an open interval ``(lower, upper)``:
        the largest grid ratio rejected below the estimate and the smallest rejected above
        it. So the null ``r0`` is rejected ("``R <= r0``" broken) exactly when
        ``lower >= r0``, and "``R >= r0``" exactly when ``upper <= r0``."""
        _check_alpha(alpha)
        threshold = math.log(1.0 / alpha)
        return self._open(self.log_e_above < threshold, self.log_e_below < threshold)

    def one_look(self, alpha: float) -> tuple[float, float]:
        """The fixed-sample likelihood-ratio interval ``{R : log L(R_hat) - log L(R) <= z^2/2}``,
        open as in :meth:`cs` (NOT anytime-valid: for leaning only)."""
        _check_alpha(alpha)
        z = _two_sided_z(alpha)
        inside = self.log_lik >= np.max(self.log_lik) - 0.5 * z * z
        return self._open(inside, inside)

    def prob_above(self, prior_sd: float) -> float:
        """Posterior probability that ``R > r0`` under a normal prior on ``log R`` centred on
        1 (no difference) with standard deviation ``prior_sd``, on the grid. With few events
        it stays near the prior's ``P(R > r0)``: it does not read much into two errors."""
        if prior_sd <= 0:
            raise ValueError(f"a prior standard deviation must be positive, got {prior_sd}")
        log_post = self.log_lik - 0.5 * (self.log_r / prior_sd) ** 2
        w = _exp(log_post - np.max(log_post))
        i = self.null_index
        return float((w[i + 1 :].sum() + 0.5 * w[i]) / w.sum())

    def prob_above_ratio(self, ratio: float, prior_sd: float) -> float:
        """:meth:`prob_above` for any ratio (not only the grid's null)."""
        if not ratio < INF:
            return 0.0
        if ratio <= 0.0:
            return 1.0
        log_post = self.log_lik - _log_prior_term(self.log_r, prior_sd)
        w = _exp(log_post - log_post.max())
        return float(w[self.log_r > math.log(ratio)].sum() / w.sum())

    def _open(self, kept_low: npt.NDArray[np.bool_], kept_high: npt.NDArray[np.bool_]) -> tuple[float, float]:
        if self.events <= 0:
            return 0.0, INF
        low, high = np.flatnonzero(kept_low), np.flatnonzero(kept_high)
        last = len(self.log_r) - 1
        first = int(low[0]) if low.size else last
        top = int(high[-1]) if high.size else 0
        lo = 0.0 if first <= 0 else math.exp(float(self.log_r[first - 1]))
        hi = INF if top >= last else math.exp(float(self.log_r[top + 1]))
        return lo, max(hi, lo)


def _log_prior_term(log_r: FloatArray, prior_sd: float) -> FloatArray:
    """``0.5 * (log_r / prior_sd) ** 2``, remembered per grid (the grids are shared)."""
    key = (id(log_r), prior_sd)
    seen = _PRIOR_TERMS.get(key)
    if seen is None or seen[0] is not log_r:
        if len(_PRIOR_TERMS) >= _TERMS_MAX:
            _PRIOR_TERMS.clear()
        term = 0.5 * (log_r / prior_sd) ** 2
        term.setflags(write=False)
        seen = (log_r, term)
        _PRIOR_TERMS[key] = seen
    return seen[1]


_PRIOR_TERMS: dict[tuple[int, float], tuple[FloatArray, FloatArray]] = {}


# Speed only. On a grid of likelihoods most points lie hundreds of log units below the
# peak: exp underflows to 0 there, and the C library takes a slow path for every such value
# (several times the cost of an ordinary exp), as log does for 0. Below _EXP_UNDERFLOW
# exp's true value is under half the smallest subnormal, so it rounds to +0.0 exactly:
# these skip those elements and give the very same arrays (NaN stays NaN).
_EXP_UNDERFLOW = -746.0


def _exp(z: FloatArray) -> FloatArray:
    """``np.exp(z)``, the values that underflow to 0 set without calling exp."""
    out: FloatArray = np.zeros_like(z)
    np.exp(z, out=out, where=~(z < _EXP_UNDERFLOW))
    return out


def _log(x: FloatArray) -> FloatArray:
    """``np.log(x)``, the zeros' -inf set without calling log."""
    out: FloatArray = np.full_like(x, -INF)
    np.log(x, out=out, where=x != 0.0)
    return out


def _stratified_log_lik(
    events_c: FloatArray, events_s: FloatArray, shares: FloatArray, log_r: FloatArray
) -> FloatArray:
    """``sum_k c_k log theta_k(R) + s_k log(1 - theta_k(R))`` on the grid, for a batch:
    events of shape (..., K), shares (K,) or broadcastable, grid (G,) -> (..., G)."""
    a = np.log1p(-shares) - np.log(shares)  # log((1 - rho) / rho)
    d = log_r[None, :] - a[..., :, None]  # (..., K, G): log R - a_k
    # log theta = -log(1 + e^{-d}), log(1 - theta) = -log(1 + e^{d})
    out: FloatArray = -(
        events_c[..., :, None] * np.logaddexp(0.0, -d) + events_s[..., :, None] * np.logaddexp(0.0, d)
    ).sum(axis=-2)
    return out


# scipy.signal.lfilter runs the recursion of _geometric_recursion in C, but importing
# scipy.signal takes 0.7 s (2 s on a loaded machine): most of a single `simulate` run. In
# Python the recursion does the very same float operations in the same order (bit-identical
# to lfilter: tests/test_simulation_speed.py), a few times slower per call; so a process runs
# its first calls in Python and imports lfilter only once it has made this many (a
# benchmark, the controller), or when something else already imported it.
PYTHON_RECURSIONS = 2000
_python_recursions = 0


def _summed_log_lik(
    events_c: FloatArray, events_s: FloatArray, shares: FloatArray, log_r: FloatArray, grid: tuple[float, ...]
) -> FloatArray:
    """:func:`_stratified_log_lik` for one batch of strata (K,) on the grid ``log_r``, each
    stratum's term remembered: a finished canary step's counts come back at every later
    tick. The terms are summed in the order numpy's sum over strata adds them (first to
    last), so every value is the same to the last bit."""
    a = np.log1p(-shares) - np.log(shares)  # as in _stratified_log_lik
    total: FloatArray | None = None
    for c, s, rho, a_k in zip(events_c.tolist(), events_s.tolist(), shares.tolist(), a, strict=True):
        key = (c, s, rho, *grid)
        term = _TERMS_SEEN.get(key)
        if term is None:
            d = log_r - a_k
            term = c * np.logaddexp(0.0, -d) + s * np.logaddexp(0.0, d)
            if len(_TERMS_SEEN) >= _TERMS_MAX:
                _TERMS_SEEN.clear()
            term.setflags(write=False)
            _TERMS_SEEN[key] = term
        total = term.copy() if total is None else total + term
    assert total is not None
    out: FloatArray = -total
    return out


_TERMS_MAX = 512
_TERMS_SEEN: dict[tuple[float, ...], FloatArray] = {}


def _geometric_recursion(x: FloatArray, q: float, python: bool | None = None) -> FloatArray:
    """``y[..., n] = x[..., n] + q * y[..., n - 1]`` along the last axis (``y[..., 0] = x[..., 0]``),
    as ``lfilter([1], [1, -q], x, axis=-1)``. ``python``: force (True) or skip (False) the
    Python loop; None chooses as above."""
    global _python_recursions
    if python is None:
        python = _python_recursions < PYTHON_RECURSIONS and "scipy.signal" not in sys.modules
        _python_recursions += python
    if not python:
        b, a = _filter_coefficients(q)
        out: FloatArray = _linear_filter()(b, a, x, -1)
        return out
    rows = np.reshape(x, (-1, x.shape[-1])).tolist()
    for row in rows:
        acc = 0.0
        for i, v in enumerate(row):
            acc = acc * q + v  # lfilter: y = z + x with z = q * y_prev, the same two roundings
            row[i] = acc
    return np.array(rows, dtype=np.float64).reshape(x.shape)


@functools.lru_cache(maxsize=64)
def _filter_coefficients(q: float) -> tuple[FloatArray, FloatArray]:
    """lfilter's ``b`` and ``a`` for the recursion with factor ``q`` (read-only, shared)."""
    b, a = np.ones(1), np.array([1.0, -q])
    b.setflags(write=False)
    a.setflags(write=False)
    return b, a


@functools.cache
def _linear_filter() -> Callable[..., FloatArray]:
    """What ``lfilter(b, a, x, axis)`` calls for these float64 arrays, without its checks
    (speed only; its own lfilter where scipy has moved it)."""
    from scipy.signal import lfilter

    try:
        from scipy.signal._sigtools import _linear_filter as direct
    except ImportError:
        return lambda b, a, x, axis: lfilter(b, a, x, axis=axis)  # type: ignore[no-any-return]
    return direct  # type: ignore[no-any-return]


def _geometric_mixtures(log_lik: FloatArray, step: float, scale: float) -> tuple[FloatArray, FloatArray]:
    """For every grid point i, the log of ``sum_{j>=i} w_{j-i} L_j / L_i`` and of
    ``sum_{j<=i} w_{i-j} L_j / L_i`` with ``w_d = (1 - q) q^d``, ``q = exp(-step / scale)``
    (weights summing to at most 1: a valid mixture). One linear recursion each way."""
    q = math.exp(-step / scale)
    top = log_lik.max(axis=-1, keepdims=True)
    x = _exp(log_lik - top)
    # Both directions in one call (half the calls; every element as computed alone).
    stacked = np.empty((2, *x.shape))
    stacked[0] = x[..., ::-1]
    stacked[1] = x
    both = _geometric_recursion(stacked, q)
    with np.errstate(divide="ignore"):
        base = math.log1p(-q) + top - log_lik
        # Sums of x >= 0 times q > 0: never negative (no clipping needed), and never -0.0.
        logs = _log(both)
        log_above: FloatArray = base + logs[0][..., ::-1]
        log_below: FloatArray = base + logs[1]
    return log_above, log_below


def _ratio_grid(r0: float, step: float, span: float) -> tuple[FloatArray, int]:
    if not 0.0 < r0 < INF:
        raise ValueError(f"a null ratio must be positive and finite, got {r0}")
    return _cached_ratio_grid(r0, step, span)


@functools.lru_cache(maxsize=256)
def _cached_ratio_grid(r0: float, step: float, span: float) -> tuple[FloatArray, int]:
    """A policy's few grids, built once (read-only: every profile shares it)."""
    half = math.ceil(span / step)
    grid: FloatArray = math.log(r0) + step * np.arange(-half, half + 1, dtype=np.float64)
    grid.setflags(write=False)
    return grid, half


def _strata(
    events_c: npt.ArrayLike, events_s: npt.ArrayLike, shares: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    c, s = _clean_array(events_c), _clean_array(events_s)
    rho = np.asarray(shares, dtype=np.float64)
    if c.shape != s.shape or c.shape[-1:] != rho.shape[-1:]:
        raise ValueError("every stratum needs the candidate's events, stable's events and a share")
    return c, s, rho


def ratio_profile(
    events_c: npt.ArrayLike,
    events_s: npt.ArrayLike,
    shares: npt.ArrayLike,
    r0: float = 1.0,
    scale: float = RATIO_PRIOR_SCALE,
    step: float = RATIO_GRID_STEP,
    span: float = RATIO_GRID_SPAN,
) -> RatioProfile:
    """The two-arm evidence about a common rate ratio over strata (see :class:`RatioProfile`).

    ``events_c[k]``, ``events_s[k]``: each arm's events (errors, slow requests, ...) in
    stratum k; ``shares[k]``: the candidate's share of that stratum's trials. Strata whose
    share is not strictly between 0 and 1, or without events, carry no information about R.
    """
    if (
        _float_list(events_c)
        and _float_list(events_s)
        and _float_list(shares)
        and len(events_c) == len(events_s) == len(shares)
    ):
        cleaned = zip(_clean_floats(events_c), _clean_floats(events_s), shares, strict=True)
        kept = [(x, y, r) for x, y, r in cleaned if 0.0 < r < 1.0 and x + y > 0.0]
        c, s, rho = (np.array([k[i] for k in kept], dtype=np.float64) for i in range(3))
    else:
        c, s, rho = _strata(events_c, events_s, shares)
        used = (rho > 0.0) & (rho < 1.0) & ((c + s) > 0.0)
        c, s, rho = c[used], s[used], rho[used]
    log_r, i0 = _ratio_grid(r0, step, span)
    if c.size == 0:
        zeros = np.zeros_like(log_r)
        low = np.full_like(log_r, -INF)
        return RatioProfile(log_r, zeros, low, low, i0, 0.0)
    log_lik = _summed_log_lik(c, s, rho, log_r, (r0, step, span))
    log_above, log_below = _geometric_mixtures(log_lik, step, scale)
    return RatioProfile(log_r, log_lik, log_above, log_below, i0, float(c.sum() + s.sum()))


def stratified_drift_log_e(
    candidate: npt.ArrayLike,
    stable: npt.ArrayLike,
    scale: float = RATIO_PRIOR_SCALE,
    step: float = RATIO_GRID_STEP,
    span: float = RATIO_GRID_SPAN,
) -> float:
    """Log e-value against "both arms draw from the same distribution", over strata.

    ``candidate[k, b]``, ``stable[k, b]``: observations in bin b during stratum k. Under the
    null an observation in any bin is the candidate's with the stratum's probability
    ``rho_k`` (its share of the stratum's observations); per bin, the ratio of the two arms'
    shares of that bin is 1. Each bin gets a two-sided grid mixture over that ratio (half
    the weight either side, as in :func:`ratio_profile`), and given the bins the factors
    multiply (Lindon & Malek 2022, generalised to shares that change between strata).
    """
    c = np.atleast_2d(_clean_array(candidate))
    s = np.atleast_2d(_clean_array(stable))
    if c.shape != s.shape:
        raise ValueError("the two arms must have the same strata and bins")
    n_c, n_s = c.sum(axis=1), s.sum(axis=1)
    used = (n_c > 0) & (n_s > 0)
    if not used.any():
        return 0.0
    c, s = c[used], s[used]
    rho = n_c[used] / (n_c[used] + n_s[used])
    bins = (c + s).sum(axis=0) > 0
    c, s = c[:, bins].T, s[:, bins].T  # (B, K)
    log_r, i0 = _ratio_grid(1.0, step, span)
    log_lik = _stratified_log_lik(c, s, rho, log_r)  # (B, G)
    log_above, log_below = _geometric_mixtures(log_lik, step, scale)
    per_bin = np.logaddexp(log_above[:, i0], log_below[:, i0]) - math.log(2.0)
    return float(per_bin.sum())


# ---------------------------------------------------------------------------------------
# Histograms: quantiles and the share above a bound


@dataclass(frozen=True)
class QuantileBracket:
    """The quantile lies in ``(lower, upper]`` with the stated confidence.

    ``upper`` is +inf when no bucket bound is proven to lie above the quantile yet (too
    few samples in the tail); ``lower`` is 0 when none is proven below it.
    """

    lower: float
    upper: float
    estimate: float  # interpolated within the bucket, for people only
    tail_samples: float  # observations above the estimate's bucket's lower bound


def interpolate_quantile(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float:
    """The quantile by linear interpolation inside its bucket, as Prometheus'
    ``histogram_quantile`` does (the first bucket starts at 0; the +Inf bucket answers the
    last finite bound). NaN without observations."""
    total = cumulative[-1] if cumulative else 0.0
    if not total or total <= 0.0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b, c in zip(bounds, cumulative, strict=True):
        if c >= rank:
            if b == INF:
                return prev_bound
            if c <= prev_count:
                return b
            return prev_bound + (b - prev_bound) * (rank - prev_count) / (c - prev_count)
        prev_bound, prev_count = (b if b != INF else prev_bound), c
    return prev_bound


def quantile_bracket(
    bounds: Sequence[float],
    cumulative: Sequence[float],
    q: float,
    alpha: float,
    prior: BetaPrior = SMALL_RATE_PRIOR,
    fixed_sample: bool = False,
) -> QuantileBracket:
    """Bracket the q-quantile between bucket bounds, valid at every sample size.

    ``F(b) >= q`` proves ``Q(q) <= b`` and ``F(b) < q`` proves ``Q(q) > b``; both are claims
    about the share of observations above ``b``, a binomial rate, judged with its confidence
    sequence (Howard & Ramdas 2022). Only two fixed bounds can make a claim wrong (those
    either side of the true quantile; the sequence is monotone in the counts), so each side
    uses ``alpha / 2`` and no correction for the number of buckets is needed.
    ``fixed_sample`` uses :func:`likelihood_interval` instead (one look only: for leaning).
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"a quantile must lie strictly between 0 and 1, got {q}")
    total = float(cumulative[-1]) if cumulative else 0.0
    estimate = interpolate_quantile(bounds, cumulative, q)
    if not total > 0.0:
        return QuantileBracket(0.0, INF, math.nan, 0.0)
    side_alpha = alpha / 2.0
    tail_target = 1.0 - q

    def interval(tail: float) -> tuple[float, float]:
        if fixed_sample:
            return likelihood_interval(tail, total, side_alpha)
        return rate_cs(tail, total, side_alpha, prior)

    finite = [(b, float(c)) for b, c in zip(bounds, cumulative, strict=True) if b != INF]
    upper = INF
    # Smallest bound whose tail share is proven <= 1 - q; only bounds whose observed tail
    # share is already <= 1 - q can qualify, and the proof gets easier going up.
    for b, c in finite:
        tail = total - c
        if tail / total > tail_target:
            continue
        if interval(tail)[1] <= tail_target:
            upper = b
            break
    lower = 0.0
    for b, c in reversed(finite):
        tail = total - c
        if tail / total <= tail_target:
            continue
        if interval(tail)[0] > tail_target:
            lower = b
            break
    below = 0.0
    for b, c in finite:
        if b >= estimate:
            break
        below = c
    return QuantileBracket(lower, upper, estimate, total - below)


def share_above(
    bounds: Sequence[float], cumulative: Sequence[float], threshold: float
) -> tuple[float, float, float]:
    """``(observations above, total, bound used)`` for "slower than ``threshold``".

    Exact when ``threshold`` is a bucket bound; otherwise the next bucket bound above is
    used (the share above it is at most the share above ``threshold``), and returned so the
    caller can say so. NaN bound when the threshold is beyond the last finite bound.
    """
    total = float(cumulative[-1]) if cumulative else 0.0
    for b, c in zip(bounds, cumulative, strict=True):
        if b >= threshold and b != INF:
            return max(total - float(c), 0.0), total, b
    return 0.0, total, math.nan


# ---------------------------------------------------------------------------------------
# Drift between two categorical distributions


def _shares(counts: FloatArray, floor: float) -> FloatArray:
    total = counts.sum()
    shares: FloatArray = counts / total if total > 0 else np.zeros_like(counts)
    return np.maximum(shares, floor)


def psi(candidate: npt.ArrayLike, stable: npt.ArrayLike, floor: float = PSI_FLOOR) -> float:
    """Population stability index ``sum (c_k - s_k) ln(c_k / s_k)`` over bins (shares floored
    at ``floor`` so an empty bin counts as rare, not impossible). 0 for identical shares."""
    c, s = _clean_array(candidate), _clean_array(stable)
    if c.shape != s.shape:
        raise ValueError("the two distributions must have the same bins")
    pc, ps = _shares(c, floor), _shares(s, floor)
    return float(np.sum((pc - ps) * np.log(pc / ps)))


def psi_bounds(
    candidate: npt.ArrayLike,
    stable: npt.ArrayLike,
    alpha: float,
    floor: float = PSI_FLOOR,
    prior: BetaPrior = GENERAL_PRIOR,
) -> tuple[float, float]:
    """A confidence sequence ``(lower, upper)`` for the PSI of the true distributions.

    Every bin share of both arms gets a confidence sequence at ``alpha / (2K)``
    (Bonferroni); each PSI term ``(c - s) ln(c / s)`` is jointly convex and zero on c = s,
    so its minimum over the box of the two shares is at the nearest corner (0 if the boxes
    overlap) and its maximum at a corner. Summing the per-bin extremes ignores that shares
    add up to one, which only widens the interval.
    """
    c, s = _clean_array(candidate), _clean_array(stable)
    k = c.size
    if k == 0:
        return 0.0, 0.0
    each = alpha / (2.0 * k)
    counts = np.concatenate([c, s])
    totals = np.concatenate([np.full(k, c.sum()), np.full(k, s.sum())])
    lo, hi = rate_cs_array(counts, totals, each, prior)
    lo, hi = np.maximum(lo, floor), np.maximum(hi, floor)
    c_lo, c_hi, s_lo, s_hi = lo[:k], hi[:k], lo[k:], hi[k:]

    def term(x: FloatArray, y: FloatArray) -> FloatArray:
        out: FloatArray = (x - y) * np.log(x / y)
        return out

    low = np.where(c_lo > s_hi, term(c_lo, s_hi), np.where(s_lo > c_hi, term(c_hi, s_lo), 0.0))
    high = np.maximum.reduce([term(c_lo, s_hi), term(c_hi, s_lo), term(c_lo, s_lo), term(c_hi, s_hi)])
    return float(low.sum()), float(high.sum())


def multinomial_log_bayes_factor(
    candidate: npt.ArrayLike,
    stable: npt.ArrayLike,
    rho: float | None = None,
    prior: BetaPrior = SHARE_PRIOR,
) -> float:
    """Log Bayes factor against "both arms draw from the same distribution".

    Under that null an observation in any bin is the candidate's with the same probability
    ``rho`` (its share of the traffic), whatever the bin. Per bin, a Beta mixture over that
    probability against ``rho`` is a test martingale (Lindon & Malek 2022, the two-category
    case); the bins' sub-sequences are independent given the bins, so the product is one
    too. ``rho`` defaults to the candidate's share of all observations.
    """
    c, s = _clean_array(candidate), _clean_array(stable)
    if rho is None:
        total = c.sum() + s.sum()
        if total <= 0:
            return 0.0
        rho = float(c.sum() / total)
    if not 0.0 < rho < 1.0:
        return 0.0
    used = (c + s) > 0
    c, s = c[used], s[used]
    log_marg = betaln(prior.a + c, prior.b + s) - betaln(prior.a, prior.b)
    log_null = c * math.log(rho) + s * math.log1p(-rho)
    return float(np.sum(log_marg - log_null))
