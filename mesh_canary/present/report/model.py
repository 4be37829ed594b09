"""What the report's renderers read: one `Page` (the rollout, its steps and the chart's time
span) and the formatting helpers. Every string shown goes through `esc`."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh_canary.core.engine import Outcome, Phase, RolloutState, StepRecord, outcome_of
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.timeline import Point, points_of, quantile
from mesh_canary.present import numbers

NONE = numbers.NONE  # shown for a missing value

# The weight chart's geometry (SVG user units).
W, H = 1200, 300
LEFT, RIGHT, TOP, BOTTOM = 52, 20, 30, 40

_VERDICT_CLASS = {"pass": "pass", "fail": "fail"}
# A finished rollout is shown by its outcome (the engine's one mapping); one still going by its phase.
_OUTCOME_CLASS = {Outcome.PROMOTED: "pass", Outcome.ROLLED_BACK: "fail"}
_PHASE_WORDS = {
    Phase.PROGRESSING: "in progress",
    Phase.PAUSED: "paused",
    Phase.WAITING_FOR_APPROVAL: "waiting for approval",
}


# --------------------------------------------------------------------------- formatting


def mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(x: float | None, digits: int = 4) -> str:
    return numbers.value(x)


def pct(x: float | None, digits: int = 2) -> str:
    return numbers.percent(x)


when = numbers.when
dur = numbers.duration


histogram_quantile = quantile  # one implementation: the timeline's


@dataclass(frozen=True)
class Rates:
    requests: float
    errors: float
    error_rate: float | None
    labeled: float
    accuracy: float | None
    p99_ms: float | None

    @classmethod
    def of(cls, c: VersionCounts) -> Rates:
        return cls(
            requests=c.requests,
            errors=c.errors,
            error_rate=c.errors / c.requests if c.requests > 0 else None,
            labeled=c.labeled,
            accuracy=c.correct / c.labeled if c.labeled > 0 else None,
            p99_ms=histogram_quantile(0.99, c.latency_ms) if c.latency_ms is not None else None,
        )


# --------------------------------------------------------------------------- the page's data


@dataclass(frozen=True)
class StepView:
    index: int
    record: StepRecord
    start: float  # seconds since the rollout started
    end: float
    verdict: str  # pass | fail | open
    window: Observation | None


def step_views(st: RolloutState) -> tuple[StepView, ...]:
    """Every step with the window it was judged on (when one was kept)."""
    windows = [w for _, w in st.earlier_windows]
    if st.stable_baseline is not None:
        windows.append(st.stable_baseline)  # blueGreen: the preview window
    now = (st.finished_at if st.finished_at is not None else st.last_tick_at) or st.step_started_at
    views: list[StepView] = []
    for i, rec in enumerate(st.steps):
        end = rec.end_s if rec.end_s is not None else max(now - st.started_at, rec.start_s)
        # A step's window starts with the step (the engine reads from step start).
        match = next((w for w in windows if abs((w.since - st.started_at) - rec.start_s) < 0.5), None)
        views.append(StepView(i, rec, rec.start_s, end, _VERDICT_CLASS.get(rec.verdict or "", "open"), match))
    return tuple(views)


@dataclass(frozen=True)
class Page:
    """One rollout as the report's renderers read it."""

    state: RolloutState
    policy: Policy | None
    status: Mapping[str, Any]
    source: str
    generated_at: float | None
    stable_version: str
    candidate_version: str
    steps: tuple[StepView, ...]
    span: float  # seconds shown on the time axes
    points: tuple[Point, ...] = ()  # the per-tick history, oldest first
    events: tuple[Mapping[str, Any], ...] = ()  # a ModelRollout's Events (the dashboard reads them)
    live: bool = False  # served by the dashboard (updates itself), not a frozen page

    @classmethod
    def of(
        cls,
        state: RolloutState,
        policy: Policy | None,
        status: Mapping[str, Any],
        source: str,
        generated_at: float | None,
    ) -> Page:
        steps = step_views(state)
        points = points_of(state.timeline)
        ends = [s.end for s in steps] + [float(p.get("at") or 0.0) - state.started_at for p in points[-1:]]
        if state.finished_at is not None:
            ends.append(state.finished_at - state.started_at)
        if state.last_tick_at is not None:
            ends.append(state.last_tick_at - state.started_at)
        return cls(
            state=state,
            policy=policy,
            status=status,
            source=source,
            generated_at=generated_at,
            stable_version=policy.stable.version if policy else str(status.get("stableVersion") or "stable"),
            candidate_version=(
                policy.candidate.version if policy else str(status.get("candidateVersion") or "candidate")
            ),
            steps=steps,
            points=points,
            # A little room after a decision shows where the traffic went.
            span=max([*ends, 1.0]) * (1.06 if state.terminal else 1.0),
        )

    def outcome(self) -> tuple[str, str]:
        """The decision in words and its colour class (pass | fail | open)."""
        st = self.state
        if st.rollback_pending:
            return "rolling back", "fail"
        outcome = outcome_of(st)
        if outcome is not None:
            return outcome.value.replace("_", " "), _OUTCOME_CLASS.get(outcome, "open")
        return _PHASE_WORDS.get(st.phase, st.phase.value), "open"

    def x(self, t: float, width: float = W) -> float:
        return LEFT + (width - LEFT - RIGHT) * min(max(t, 0.0), self.span) / self.span

    @staticmethod
    def y(weight: float) -> float:
        return TOP + (H - TOP - BOTTOM) * (1.0 - weight / 100.0)
