"""Traffic weights: what a TrafficRouter writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Weights:
    """Percent of live traffic per version (sums to 100), plus the shadow copy."""

    stable: int
    candidate: int
    fallback: int = 0
    mirror_percent: int = 0  # share of stable's traffic copied to the candidate

    def __post_init__(self) -> None:
        if self.stable + self.candidate + self.fallback != 100:
            raise ValueError(f"weights {self} do not add up to 100")

    @classmethod
    def candidate_at(cls, percent: int, mirror_percent: int = 0) -> Weights:
        return cls(stable=100 - percent, candidate=percent, mirror_percent=mirror_percent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stable": self.stable,
            "candidate": self.candidate,
            "fallback": self.fallback,
            "mirrorPercent": self.mirror_percent,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Weights:
        return cls(
            int(d["stable"]), int(d["candidate"]), int(d.get("fallback", 0)), int(d.get("mirrorPercent", 0))
        )


ALL_STABLE = Weights(stable=100, candidate=0)
