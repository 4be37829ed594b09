"""What a check kind is: one small record that every layer reads (see checks/__init__.py).

A kind says which bounds and qualifiers a policy may give it, the signals it needs from a
metrics source, its default name, whether it judges labels, how it is evaluated and the
words it is shown with. Policy rules, the judge, the engine, query planning, simulation and
the report read these records; none of them names a kind.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard

from mesh_canary.checks.bounds import Outcome
from mesh_canary.checks.evidence import Evidence
from mesh_canary.core.durations import DURATION_PATTERN, parse_duration
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.stats import BetaPrior
from mesh_canary.core.verdicts import CheckResult, JudgeContext

Signal = Literal["requests", "errors", "latency", "confusion", "predictions", "features", "custom"]
"""What a metrics source measures per version (a field of VersionCounts): requests, 5xx
errors, the latency histogram, the labelled-prediction confusion counts, predictions by
class, input-feature histograms, and custom values (one per custom check)."""

SIGNALS: tuple[Signal, ...] = (
    "requests",
    "errors",
    "latency",
    "confusion",
    "predictions",
    "features",
    "custom",
)

# Every bound a check may take: YAML name -> Check attribute and its words for a person.
BOUNDS: dict[str, tuple[str, str]] = {
    "max": ("max", "at most {}"),
    "min": ("min", "at least {}"),
    "maxIncrease": ("max_increase", "at most stable + {}"),
    "maxIncreaseRatio": ("max_increase_ratio", "at most stable x (1 + {})"),
    "maxDecrease": ("max_decrease", "at least stable - {}"),
    "maxPSI": ("max_psi", "PSI at most {}"),
    "maxDeviation": ("max_deviation", "share within ±{}"),
}

_DURATION = re.compile(DURATION_PATTERN)


def is_number(value: Any) -> TypeGuard[int | float]:
    """A number in a policy document (a boolean is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def milliseconds(value: Any) -> float | None:
    """Milliseconds of a latency written as a duration or a number of ms (None: neither)."""
    if is_number(value):
        return float(value)
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return parse_duration(value) * 1000.0
    return None


Counts = Callable[[Check, VersionCounts], list[tuple[str, float]]]
Rule = Callable[[Mapping[str, Any], frozenset[str]], list[tuple[str, str]]]


class Judging(Protocol):
    """What an evaluation may ask of the judge: its priors and its knobs of leaning."""

    small_rate_prior: BetaPrior
    general_prior: BetaPrior
    ratio_scale: float
    lean_prior_sd: float
    lean_alpha: float | None

    def lean_threshold(
        self, ctx: JudgeContext, window: Observation, level: float | None = None
    ) -> float | None: ...

    def lean_probability(self, level: float | None) -> float: ...

    def lean(
        self, outcomes: list[Outcome], judged_at: Callable[[float], list[Outcome]], p: float | None
    ) -> list[Outcome]: ...


Evaluate = Callable[[Judging, Check, Evidence, JudgeContext, float], CheckResult]


def _own_name(kind: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda check: kind


def _never(check: Mapping[str, Any]) -> bool:
    return False


def _always(ctx: JudgeContext) -> bool:
    return True


def _no_rules(check: Mapping[str, Any], variables: frozenset[str]) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class CheckKind:
    """One kind of check (the value of a check's ``metric``)."""

    name: str
    title: str  # in words, for reasons and reports: "error rate"
    bounds: tuple[str, ...]  # the bounds it takes (keys of BOUNDS); at least one is set
    signals: frozenset[Signal]
    evaluate: Evaluate
    counts: Counts  # the counts it reads from one version, each named for a reason
    qualifiers: tuple[str, ...] = ()  # its other fields (quantile, class, feature, ...)
    # Qualifiers it cannot do without: field -> why ("judge one class").
    required: Mapping[str, str] = field(default_factory=dict)
    label_based: bool = False  # judged on ground truth that arrives late (minLabeled)
    default_name: Callable[[Mapping[str, Any]], str] | None = None
    is_share: Callable[[Mapping[str, Any]], bool] = _never  # its bounds are shares (0..1)
    takes_duration: Callable[[Mapping[str, Any]], bool] = _never  # max/maxIncrease may be durations
    never_negative: bool = True  # its value is never below 0 (max/min below 0 are refused)
    uses_statistics: Callable[[JudgeContext], bool] = _always  # spends a share of the budget
    rules: Rule = _no_rules  # its own rules on a policy's check: (field or "", sentence)
    rate: Callable[[Check, VersionCounts], tuple[float, float]] | None = None  # (events, trials)

    def name_of(self, check: Mapping[str, Any]) -> str:
        """The name a check of this kind gets when it has none."""
        return (self.default_name or _own_name(self.name))(check)

    @property
    def fields(self) -> tuple[str, ...]:
        """Every field of a policy's check this kind accepts besides metric and name."""
        return (*self.bounds, *self.qualifiers)


def tolerance_words(check: Check, number: Callable[[float], str] = lambda v: f"{v:g}") -> str:
    """A check's tolerance in words, from its bounds (for reports), numbers shown by ``number``."""
    words = []
    for attr, text in BOUNDS.values():
        v = getattr(check, attr, None)
        if v is not None:
            words.append(text.format(number(float(v))))
    return "; ".join(words)
