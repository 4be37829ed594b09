"""The judge's interface: what a verdict on one check is, and what a judge is.

The engine depends only on this module; the statistics behind a verdict live in
`mesh_canary.core.judge` and can be swapped without touching the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Protocol

from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation


class Verdict(StrEnum):
    PASS = "pass"  # evidence that the candidate is within tolerance
    FAIL = "fail"  # evidence that it is worse than tolerated, or breaks an absolute SLO
    INCONCLUSIVE = "inconclusive"  # not enough evidence either way yet


@dataclass(frozen=True)
class CheckResult:
    """A verdict with what it rests on, so the reason can be shown to a person."""

    name: str
    metric: str
    verdict: Verdict
    reason: str  # one sentence, e.g. "error rate 1.2% is above stable's 0.5% + 0.5%"
    estimate: float | None = None  # the candidate's value (or the difference, see `quantity`)
    stable_estimate: float | None = None
    lower: float | None = None  # confidence bounds on `quantity`
    upper: float | None = None
    bound: str = ""  # the tolerance in words, e.g. "<= stable + 0.005"
    quantity: str = ""  # what estimate/lower/upper measure, e.g. "candidate - stable"
    samples: float = 0.0  # candidate samples the verdict rests on
    enough_data: bool = False  # minimum samples met (minRequests, minLabeled, ...)
    leaning_fail: bool = False  # estimate beyond tolerance, not yet proven: hold the step

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.value
        d["enoughData"] = d.pop("enough_data")
        d["leaningFail"] = d.pop("leaning_fail")
        d["stableEstimate"] = d.pop("stable_estimate")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CheckResult:
        return cls(
            name=d["name"],
            metric=d["metric"],
            verdict=Verdict(d["verdict"]),
            reason=d.get("reason", ""),
            estimate=d.get("estimate"),
            stable_estimate=d.get("stableEstimate"),
            lower=d.get("lower"),
            upper=d.get("upper"),
            bound=d.get("bound", ""),
            quantity=d.get("quantity", ""),
            samples=d.get("samples", 0.0),
            enough_data=d.get("enoughData", False),
            leaning_fail=d.get("leaningFail", False),
        )


@dataclass(frozen=True)
class JudgeContext:
    """What the judge needs to know about the step besides the counts."""

    candidate_share: float  # expected share of requests going to the candidate (0..1)
    alpha: float  # false-fail budget for this evaluation, to be split across checks
    min_requests: int  # per version, before any relative verdict
    mirrored: bool = False  # candidate sees a copy of the traffic (blue/green preview)
    step_index: int = 0
    step_count: int = 1
    stable_baseline: Observation | None = None  # blue/green after the switch: stable's preview window
    # Earlier steps' complete windows, oldest first, each with the candidate's share then:
    # evidence a judge may carry forward (a product of per-step martingales stays valid).
    earlier_windows: tuple[tuple[float, Observation], ...] = ()
    # The last judged step's own window, judged besides the carried evidence: it may hold
    # the step or fail it, but leans as an ordinary step does (its data is a fraction).
    own_window: bool = False
    # When the step is rolled back if still undecided (its maxStepDuration), in seconds from
    # its start: holding a healthy candidate that long is a false rollback too.
    step_deadline_s: float = math.inf


class Judge(Protocol):
    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        """One result per check, in order. Pure: same inputs, same results."""
        ...
