"""Latency shapes over Istio's buckets: a lognormal through the median and the p99, and an
optional heavy tail (``latency.tail: {share, alpha}``).

With a tail, a share of the requests takes ``L x P`` where ``L`` is the version's lognormal
and ``P`` is Pareto with minimum 1 and index ``alpha`` (``P(P > x) = x**-alpha``; alpha <= 2
has infinite variance: heavy). ``log P`` is exponential with rate ``alpha``, so ``log(L x P)``
is an exponentially modified Gaussian whose CDF has a closed form: the bucket shares stay
exact and cost a few ``erfc`` calls, as before. ``medianMs`` and ``p99Ms`` describe the
lognormal body; the tail moves the overall quantiles up (that is its point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Tail", "bucket_shares"]

_INF = math.inf
_MAX_EXP = 700.0  # math.exp overflows above ~709


@dataclass(frozen=True)
class Tail:
    share: float  # share of requests in the heavy tail
    alpha: float  # Pareto index of the tail's multiplier (lower: heavier)


def _normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _tail_cdf(x: float, mu: float, sigma: float, alpha: float) -> float:
    """P(N(mu, sigma) + Exp(alpha) <= x): the exponentially modified Gaussian's CDF."""
    z = (x - mu) / sigma
    shifted = _normal_cdf(z - alpha * sigma)
    if shifted == 0.0:
        return _normal_cdf(z)
    exponent = -alpha * (x - mu) + 0.5 * (alpha * sigma) ** 2 + math.log(shifted)
    return max(_normal_cdf(z) - math.exp(min(exponent, _MAX_EXP)), 0.0)


def bucket_shares(
    bounds: tuple[float, ...], median_ms: float, sigma: float, tail: Tail | None = None
) -> npt.NDArray[np.float64]:
    """Chance of each bucket (ending at each bound, the last one +Inf)."""
    mu = math.log(median_ms)
    # The same arithmetic as before tails existed, so old scenarios draw the very same counts.
    body = [
        0.5 * math.erfc(-(math.log(b) - mu) / (sigma * math.sqrt(2.0))) if b != _INF else 1.0 for b in bounds
    ]
    cdf = np.asarray(body)
    if tail is not None and tail.share > 0.0:
        heavy = [_tail_cdf(math.log(b), mu, sigma, tail.alpha) if b != _INF else 1.0 for b in bounds]
        cdf = (1.0 - tail.share) * cdf + tail.share * np.maximum.accumulate(np.asarray(heavy))
    shares: npt.NDArray[np.float64] = np.diff(cdf, prepend=0.0)
    return shares
