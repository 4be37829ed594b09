"""Per-version counts over one analysis window: what every MetricsSource returns.

Counts are accumulated over a window ``[since, at]`` (the engine asks for the window of
the current step), so a judge sees the same shape whether they came from Prometheus, the
embedded mesh or the simulator, and cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

INF = float("inf")


@dataclass(frozen=True)
class Histogram:
    """Prometheus-style cumulative histogram: ``counts[i]`` observations <= ``bounds[i]``.

    The last bound is +Inf, so ``counts[-1]`` is the total.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0

    def per_bucket(self) -> tuple[float, ...]:
        """Non-cumulative counts per bucket (the bucket ending at each bound)."""
        out, prev = [], 0.0
        for c in self.counts:
            out.append(max(c - prev, 0.0))
            prev = c
        return tuple(out)

    def minus(self, other: Histogram | None) -> Histogram:
        if other is None or not other.counts:
            return self
        if other.bounds != self.bounds:
            raise ValueError("histograms with different bucket bounds cannot be subtracted")
        return Histogram(
            self.bounds, tuple(max(a - b, 0.0) for a, b in zip(self.counts, other.counts, strict=True))
        )

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": [_enc(b) for b in self.bounds], "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        return cls(tuple(_dec(b) for b in d["bounds"]), tuple(float(c) for c in d["counts"]))


def _enc(x: float) -> float | str:
    return "+Inf" if x == INF else x


def _dec(x: float | str) -> float:
    return INF if x in ("+Inf", "Inf", "inf") else float(x)


@dataclass(frozen=True)
class VersionCounts:
    """What one version did in the window."""

    requests: float = 0.0
    errors: float = 0.0
    latency_ms: Histogram | None = None
    # Ground truth that arrived in the window: (predicted class, actual class) -> count.
    confusion: dict[tuple[str, str], float] = field(default_factory=dict)
    # Predictions made in the window, by predicted class (or score bin): for drift.
    predictions: dict[str, float] = field(default_factory=dict)
    # Input-feature histograms, by feature name: for featureDrift.
    features: dict[str, Histogram] = field(default_factory=dict)
    # Values of custom checks, by check name (already aggregated over the window).
    custom: dict[str, float] = field(default_factory=dict)

    @property
    def labeled(self) -> float:
        return float(sum(self.confusion.values()))

    @property
    def correct(self) -> float:
        return float(sum(c for (p, a), c in self.confusion.items() if p == a))

    def minus(self, base: VersionCounts | None) -> VersionCounts:
        """Counts since ``base`` was taken (both cumulative from the same origin)."""
        if base is None:
            return self
        lat = self.latency_ms.minus(base.latency_ms) if self.latency_ms is not None else None
        return VersionCounts(
            requests=max(self.requests - base.requests, 0.0),
            errors=max(self.errors - base.errors, 0.0),
            latency_ms=lat,
            confusion=_sub(self.confusion, base.confusion),
            predictions=_sub(self.predictions, base.predictions),
            features={k: h.minus(base.features.get(k)) for k, h in self.features.items()},
            custom=dict(self.custom),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latencyMs": self.latency_ms.to_dict() if self.latency_ms else None,
            "confusion": [[p, a, c] for (p, a), c in sorted(self.confusion.items())],
            "predictions": dict(self.predictions),
            "features": {k: h.to_dict() for k, h in self.features.items()},
            "custom": dict(self.custom),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionCounts:
        lat = d.get("latencyMs")
        return cls(
            requests=float(d.get("requests", 0.0)),
            errors=float(d.get("errors", 0.0)),
            latency_ms=Histogram.from_dict(lat) if lat else None,
            confusion={(str(p), str(a)): float(c) for p, a, c in d.get("confusion", [])},
            predictions={str(k): float(v) for k, v in d.get("predictions", {}).items()},
            features={k: Histogram.from_dict(h) for k, h in d.get("features", {}).items()},
            custom={k: float(v) for k, v in d.get("custom", {}).items()},
        )


def _sub(a: dict[Any, float], b: dict[Any, float]) -> dict[Any, float]:
    return {k: max(v - b.get(k, 0.0), 0.0) for k, v in a.items()}


@dataclass(frozen=True)
class Observation:
    """Both versions' counts over ``[since, at]`` (seconds on the driver's clock).

    ``problem`` says why data is missing or untrustworthy (Prometheus down, an error
    answer, NaN); the engine treats such an observation as no data, never as a pass.
    """

    since: float
    at: float
    stable: VersionCounts = field(default_factory=VersionCounts)
    candidate: VersionCounts = field(default_factory=VersionCounts)
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "at": self.at,
            "stable": self.stable.to_dict(),
            "candidate": self.candidate.to_dict(),
            "problem": self.problem,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Observation:
        return cls(
            since=float(d["since"]),
            at=float(d["at"]),
            stable=VersionCounts.from_dict(d.get("stable", {})),
            candidate=VersionCounts.from_dict(d.get("candidate", {})),
            problem=d.get("problem"),
        )
