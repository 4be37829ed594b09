"""Words for people: numbers in a check's units, confidence levels, verdict sentences."""

from __future__ import annotations

import math
from typing import Protocol

from mesh_canary.core.verdicts import Verdict


def pct(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    v = 100.0 * x
    body = f"{v:+.2f}" if signed else f"{v:.2f}"
    if 0 < abs(v) < 0.1:
        body = f"{v:+.2g}" if signed else f"{v:.2g}"
    return body + "%"


def millis(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return (f"{x:+.4g}" if signed else f"{x:.4g}") + "ms"


def times(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}x"


def plain(x: float, signed: bool = False) -> str:
    if x != x:
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


class Format(Protocol):
    def __call__(self, x: float, signed: bool = False) -> str: ...


FORMATS: dict[str, Format] = {"rate": pct, "ms": millis, "value": plain}


def confidence_level(alpha: float) -> str:
    """'99.9%' for alpha = 0.001: the confidence of a sequence, with enough digits."""
    digits = max(0, math.ceil(-math.log10(alpha)) - 2) if alpha > 0 else 3
    text = f"{100.0 * (1.0 - alpha):.{digits}f}"
    if float(text) >= 100.0:  # never round a confidence up to 100%
        text = f"{math.floor(100.0 * (1.0 - alpha) * 10**digits) / 10**digits:.{digits}f}"
    return text + "%"


def quantile_name(q: float) -> str:
    return f"{100.0 * q:g}"


def bayes(log_bf: float) -> str:
    if log_bf > 700:
        return "> 1e300"
    return f"{math.exp(log_bf):.3g}"


def verdict_sentence(head: str, verdict: Verdict, leaning: bool, *, broken: str, limit: str) -> str:
    """`head` (what was measured) followed by what the evidence says about `limit`."""
    if verdict is Verdict.FAIL:
        return f"{head} {broken} {limit}"
    if verdict is Verdict.PASS:
        return f"{head} is within {limit}"
    if leaning:
        return f"{head} {broken} {limit} but not proven yet"
    return f"{head} is not yet proven within {limit}"
