"""The judge's interface: what a verdict on one check is, and what a judge is.

The engine depends only on this module; the statistics behind a verdict live in
`mesh_canary.core.judge` and can be swapped without touching the engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from mesh_canary.core.model import AnalysisSpec, Check
from mesh_canary.core.observations import Observation


class Verdict(StrEnum):
    PASS = "pass"  # evidence that the candidate is within tolerance
    FAIL = "fail"  # evidence that it is worse than tolerated, or breaks an absolute SLO
    INCONCLUSIVE = "inconclusive"  # not enough evidence either way yet


@dataclass(frozen=True)
class Tally:
    """What a check carries from tick to tick to see whether its counts are overdispersed:
    the step's cumulative counts at the last tick (to take this interval's increments) and
    the Pearson statistics of the intervals so far (see checks/dispersion.py). Opaque to the
    engine, which keeps the latest tally of each check in the state."""

    name: str  # the check's
    step: int  # the step whose cumulative counts ``last`` are
    last: tuple[float, ...] = ()
    seen: tuple[float, ...] = ()  # the closed intervals' counts added up, in all steps
    x2_split: float = 0.0  # Pearson statistic of how events split between the versions
    df_split: int = 0
    x2_own: float = 0.0  # Pearson statistic of each version's own rate
    df_own: int = 0
    clipped: tuple[float, ...] = ()  # candidate events set aside as bursts, per step
    intervals: int = 0  # closed intervals, in all steps
    opened_at: float | None = None  # when the open interval began (the last close)
    # The burst under way: since when the candidate's events stand out, what of them was set
    # aside (per step), and whether an elevation has outlasted burstDuration in this rollout
    # (a lasting change: then nothing is set aside any more).
    burst_since: float | None = None
    burst_clipped: tuple[float, ...] = ()
    burst_outlasted: bool = False
    burst_pearson: tuple[float, ...] = ()  # the burst's share of the Pearson statistics
    burst_seen: tuple[float, ...] = ()  # the candidate's events and trials during the burst
    # At the latest look (the open interval included): a burst is being set aside. The engine
    # holds the step's weight meanwhile (it never advances while a burst is set aside).
    bursting: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "step": self.step,
            "last": list(self.last),
            "seen": list(self.seen),
            "x2Split": self.x2_split,
            "dfSplit": self.df_split,
            "x2Own": self.x2_own,
            "dfOwn": self.df_own,
            "clipped": list(self.clipped),
            "intervals": self.intervals,
            "openedAt": self.opened_at,
            "burstSince": self.burst_since,
            "burstClipped": list(self.burst_clipped),
            "burstOutlasted": self.burst_outlasted,
            "burstPearson": list(self.burst_pearson),
            "burstSeen": list(self.burst_seen),
            # Only while true: a tally without a burst under way reads as before the field.
            **({"bursting": True} if self.bursting else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tally:
        return cls(
            name=str(d["name"]),
            step=int(d["step"]),
            last=tuple(float(x) for x in d.get("last", ())),
            seen=tuple(float(x) for x in d.get("seen", ())),
            x2_split=float(d.get("x2Split", 0.0)),
            df_split=int(d.get("dfSplit", 0)),
            x2_own=float(d.get("x2Own", 0.0)),
            df_own=int(d.get("dfOwn", 0)),
            clipped=tuple(float(x) for x in d.get("clipped", ())),
            intervals=int(d.get("intervals", 0)),
            opened_at=_optional_float(d.get("openedAt")),
            burst_since=_optional_float(d.get("burstSince")),
            burst_clipped=tuple(float(x) for x in d.get("burstClipped", ())),
            burst_outlasted=bool(d.get("burstOutlasted", False)),
            burst_pearson=tuple(float(x) for x in d.get("burstPearson", ())),
            burst_seen=tuple(float(x) for x in d.get("burstSeen", ())),
            bursting=bool(d.get("bursting", False)),
        )


def _optional_float(x: Any) -> float | None:
    return None if x is None else float(x)


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
    tally: Tally | None = None  # carried to the next tick (kept by the engine, not shown)

    @property
    def proven(self) -> bool:
        """Proved within tolerance (PASS): the only verdict that earns "passed"."""
        return self.verdict is Verdict.PASS

    @property
    def ruled_out(self) -> str:
        """What effect size the evidence rules out, in words ("" when none yet)."""
        return evidence_words(self)[0]

    @property
    def not_ruled_out(self) -> str:
        """What effect size is still possible, in words ("" when the check is decided:
        proven, or failed)."""
        return "" if self.verdict is not Verdict.INCONCLUSIVE else evidence_words(self)[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(replace(self, tally=None))
        d.pop("tally")
        d["verdict"] = self.verdict.value
        d["enoughData"] = d.pop("enough_data")
        d["leaningFail"] = d.pop("leaning_fail")
        d["stableEstimate"] = d.pop("stable_estimate")
        # Derived from the fields above (not read back): what was proven, what is ruled out.
        d["proven"] = self.proven
        d["ruledOut"] = self.ruled_out
        d["notRuledOut"] = self.not_ruled_out
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


def _amount(x: float, result: CheckResult) -> str:
    """``x`` in the check's units: points of a percentage for a difference of rates, the
    ratio for a ratio, ms for latency, the plain number otherwise."""
    if result.quantity.startswith("candidate / stable"):
        return f"{x:.3g}x"
    if "%" in result.bound:
        return (
            f"{100.0 * x:.2g} points"
            if result.quantity.startswith("candidate - stable")
            else f"{100 * x:.3g}%"
        )
    if "ms" in result.bound:
        return f"{x:.4g}ms"
    return f"{x:.3g}"


def evidence_words(result: CheckResult) -> tuple[str, str]:
    """(what is ruled out, what is not) by a check's confidence sequence on its shown bound.

    A bound written ">= ..." guards against a drop (its lower end matters), any other bound
    against a rise (its upper end). E.g. accuracy with maxDecrease and a lower end of -0.021:
    ("", "a drop of up to 2.1 points") while the interval still reaches below 0."""
    drop = result.bound.startswith(">=")
    what = "drop" if drop else "rise"
    if not result.quantity or not result.bound:
        return "", "any effect"
    end = result.lower if drop else result.upper
    if end is None:
        return "", f"any {what}"
    if result.quantity.startswith("candidate - stable"):
        size = -end if drop else end
        if size <= 0:
            return f"any {what}", ""
        return f"a {what} larger than {_amount(size, result)}", f"a {what} of up to {_amount(size, result)}"
    if result.quantity.startswith("candidate / stable"):
        if (end > 1.0) if not drop else (end < 1.0):
            x = _amount(end, result)
            return (
                f"a ratio to stable {'below' if drop else 'above'} {x}",
                f"a ratio to stable {'down' if drop else 'up'} to {x}",
            )
        return f"any {what}", ""
    # An absolute quantity: the candidate's value, or a distance such as PSI.
    q = result.quantity
    label = q.split(" (")[-1].rstrip(")") if " (" in q else q.split(" of ")[0]
    side, far = ("below", "low") if drop else ("above", "high")
    return f"{label} {side} {_amount(end, result)}", f"{label} as {far} as {_amount(end, result)}"


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
    # Each check's tally from the previous tick (see Tally). ``ticks``: the judge is called
    # at every tick of the rollout with the tallies it returned (the engine does), so it
    # can measure how counts vary between intervals; a one-off call judges one window.
    tallies: tuple[Tally, ...] = ()
    ticks: bool = False
    # The policy's analysis.burstDuration (see checks/dispersion.py).
    burst_duration_s: float = AnalysisSpec.burst_duration_s

    def tally_of(self, name: str) -> Tally | None:
        return next((t for t in self.tallies if t.name == name), None)


class Judge(Protocol):
    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        """One result per check, in order. Pure: same inputs, same results."""
        ...
