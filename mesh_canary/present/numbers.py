"""Readable numbers, one way everywhere (the dashboard, the report, the console): shares as
percentages, latencies in milliseconds, counts as integers, intervals as "1.5%-3.3%",
ratios as "1.2x", durations as "2m30s". Missing values are an en dash."""

from __future__ import annotations

import datetime
import math

from mesh_canary.core.durations import format_duration

NONE = "\N{EN DASH}"  # shown for a missing value


def _sig(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, no exponent, no trailing zeros (1234.5 -> "1235")."""
    if x == 0:
        return "0"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:.0f}"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _special(x: float | None) -> str | None:
    if x is None:
        return NONE
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return None


def _sign(x: float, signed: bool) -> str:
    return "+" if signed and x > 0 else ""


def percent(x: float | None, signed: bool = False) -> str:
    """A share (0..1) as a percentage: 0.0235 -> "2.35%", 0.00052 -> "0.052%"."""
    return _special(x) or f"{_sign(x or 0.0, signed)}{_sig(100.0 * (x or 0.0))}%"


def millis(x: float | None, signed: bool = False) -> str:
    """A latency: "12.3 ms", "250 ms", "1.5 s" from a second up."""
    if (s := _special(x)) is not None:
        return s
    assert x is not None
    if abs(x) >= 1000.0:
        return f"{_sign(x, signed)}{_sig(x / 1000.0)} s"
    return f"{_sign(x, signed)}{_sig(x)} ms"


def ratio(x: float | None, signed: bool = False) -> str:
    """A ratio: 1.2 -> "1.2x"."""
    if (s := _special(x)) is not None:
        return s if s != "+inf" else "inf"
    assert x is not None
    return f"{_sig(x)}x"


def count(x: float | None) -> str:
    """A count as an integer with thousands separators: 1234.6 -> "1,235"."""
    if (s := _special(x)) is not None:
        return s
    assert x is not None
    return f"{round(x):,}"


def value(x: float | None, signed: bool = False) -> str:
    """Any other number: four significant digits."""
    if (s := _special(x)) is not None:
        return s
    assert x is not None
    return f"{_sign(x, signed)}{_sig(x, 4)}"


_UNITS = {"rate": percent, "ms": millis, "ratio": ratio, "value": value}


def in_unit(x: float | None, unit: str, signed: bool = False) -> str:
    """``x`` in a check's unit (rate | ms | ratio | value)."""
    return _UNITS.get(unit, value)(x, signed)


def interval(lo: float | None, hi: float | None, unit: str, signed: bool = False) -> str:
    """Bounds as one interval: "1.5%-3.3%"; with a negative end "-0.76% to +1.9%"; an open
    end as "at most 3.3%" / "at least 1.5%"."""
    if lo is None and hi is None:
        return NONE
    if lo is None:
        return f"at most {in_unit(hi, unit, signed)}"
    if hi is None:
        return f"at least {in_unit(lo, unit, signed)}"
    a, b = in_unit(lo, unit, signed), in_unit(hi, unit, signed)
    if signed or lo < 0 or hi < 0:
        return f"{a} to {b}"
    return f"{a}-{b}"


def duration(seconds: float | None) -> str:
    """A duration: "2m30s"."""
    return NONE if seconds is None else format_duration(max(seconds, 0.0))


def when(t: float) -> str:
    """A time of the driver's clock: UTC for wall-clock times, else seconds (virtual time)."""
    if t > 1e9:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"t={value(t)}s"
