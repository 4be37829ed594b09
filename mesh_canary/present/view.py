"""ONE rollout view and ONE serialisation: what every command's ``-o json|yaml`` says about a
rollout (`run`, `rollout start|status|history`, the report), documented in docs/output.md
and checked against ``output.schema.json`` next to this module.

A `RolloutView` is built from an engine state and its policy (`run`, the controller's
status) or from a ModelRollout read from the API (`rollout status`); either way the
document has the same fields, spelled the same:

- times are RFC 3339 UTC strings (``startedAt``, ``finishedAt``), durations
  ``durationSeconds``;
- ``phase`` is one of the engine's `Phase` values, or ``Pending`` / ``Invalid`` (before a
  rollout started) or ``RollingBack`` (a rollback decided, its write still retried);
- ``outcome`` is one of the engine's `Outcome` values (``promoted``, ``rolled_back``, ...),
  the same spelling `simulate` uses;
- versions are ``stableVersion`` / ``candidateVersion``, steps ``currentStep`` /
  ``stepCount`` (integers).

Pure: no I/O and no clock (the controller's status and the CLI both use it).
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from mesh_canary.core.engine import (
    OUTCOME_OF_PHASE,
    Outcome,
    Phase,
    RolloutState,
    StepRecord,
    outcome_of,
    schedule,
)
from mesh_canary.core.model import Policy
from mesh_canary.core.verdicts import CheckResult, Verdict

# Phases a status shows besides the engine's own.
PENDING = "Pending"  # no rollout started yet
INVALID = "Invalid"  # the spec is invalid: nothing started
ROLLING_BACK = "RollingBack"  # a rollback is decided but its write has not gone through yet
PHASES: tuple[str, ...] = (*(p.value for p in Phase), PENDING, INVALID, ROLLING_BACK)
TERMINAL_PHASES: frozenset[str] = frozenset(p.value for p in OUTCOME_OF_PHASE)

# Spellings of outcomes written before there was one (a ModelRollout's stored history).
_OLD_OUTCOMES = {
    "rolledBack": Outcome.ROLLED_BACK,
    "inProgress": Outcome.IN_PROGRESS,
    "unfinished": Outcome.IN_PROGRESS,
}

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MESSAGE_LIMIT = 1024


# --------------------------------------------------------------------------- spellings


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC, to the second (what Kubernetes uses for times)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime(_TIME_FORMAT)


def parse_rfc3339(text: str) -> float:
    """The epoch seconds of a time written by `rfc3339`."""
    return datetime.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=datetime.UTC).timestamp()


def outcome_word(value: object) -> str | None:
    """The one spelling of an outcome read from anywhere (older spellings too); None if unknown."""
    if isinstance(value, str):
        if value in _OLD_OUTCOMES:
            return _OLD_OUTCOMES[value].value
        if value in {o.value for o in Outcome}:
            return value
    return None


def json_safe(value: Any) -> Any:
    """JSON anyone accepts: no NaN/Infinity, and no nulls in objects.

    A null in a Kubernetes merge patch deletes the field, so a status never carries one;
    readers treat a missing optional field as unset.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            safe = json_safe(v)
            if safe is not None:
                out[str(k)] = safe
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dump(doc: Any, fmt: str) -> str:
    """The one serialisation of ``-o json|yaml``."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(doc, sort_keys=False))
    return json.dumps(doc, indent=2)


def output_schema() -> dict[str, Any]:
    """The JSON Schema of every ``-o json`` document (docs/output.md)."""
    schema: dict[str, Any] = json.loads(
        files("mesh_canary.present").joinpath("output.schema.json").read_text(encoding="utf-8")
    )
    return schema


# --------------------------------------------------------------------------- pieces


def check_document(c: CheckResult) -> dict[str, Any]:
    """One check's latest verdict: estimate, bounds, tolerance, samples and the sentence."""
    doc: dict[str, Any] = json_safe(
        {
            "name": c.name,
            "metric": c.metric,
            "verdict": c.verdict.value,
            "estimate": c.estimate,
            "stableEstimate": c.stable_estimate,
            "lower": c.lower,
            "upper": c.upper,
            "bound": c.bound or None,
            "quantity": c.quantity or None,
            # A count, so an integer (an effective count from discounted evidence is rounded).
            "samples": round(c.samples) if math.isfinite(c.samples) else None,
            "enoughData": c.enough_data,
            "proven": c.proven,
            "ruledOut": c.ruled_out or None,
            "notRuledOut": c.not_ruled_out or None,
            "reason": c.reason or None,
        }
    )
    return doc


def status_message(state: RolloutState, policy: Policy | None) -> str:
    """One sentence saying where the rollout is, for people."""
    candidate = policy.candidate.version if policy else "the candidate"
    w = state.weights
    if state.phase is Phase.SUCCEEDED:
        return f"promoted {candidate}: 100% of traffic"
    if state.rollback_pending:
        return f"rolling back: the write of 100% stable has not gone through yet, retrying ({state.reason})"
    if state.phase is Phase.ABORTED:
        return f"stopped without writing: {state.reason}"
    if state.phase is Phase.ROLLED_BACK:
        return f"rolled back to 100% stable: {state.reason}"
    if state.phase is Phase.PAUSED:
        return f"paused at {w.candidate}% (checks still run; a failed check still rolls back)"
    if state.phase is Phase.WAITING_FOR_APPROVAL:
        return f"all checks ready at {w.candidate}%: waiting for `mesh-canary rollout approve {state.name}`"
    where = (
        f"mirroring {w.mirror_percent}% to {candidate}"
        if w.mirror_percent
        else f"{w.candidate}% of traffic to {candidate}"
    )
    holding = [c.name for c in state.checks if c.verdict is not Verdict.PASS]
    step = f"step {state.step_index + 1}/{len(schedule(policy))}: " if policy else ""
    return f"{step}{where}" + (f"; waiting on {', '.join(holding)}" if holding else "")


def _duration(started: float | None, finished: float | None) -> float | None:
    if started is None or finished is None:
        return None
    return round(max(finished - started, 0.0), 1)


def history_entry(
    state: RolloutState,
    stable_version: str,
    candidate_version: str,
    outcome: str | None = None,
    reason: str | None = None,
    finished_at: float | None = None,
) -> dict[str, Any]:
    """One past rollout (a ModelRollout's ``status.history``): versions, outcome, reason,
    start, end, duration."""
    finished = finished_at if finished_at is not None else state.finished_at
    entry: dict[str, Any] = {
        "id": f"{state.policy_fingerprint}-{int(state.started_at)}",
        "stableVersion": stable_version,
        "candidateVersion": candidate_version,
        "outcome": outcome_word(outcome) or str(outcome_of(state) or Outcome.IN_PROGRESS),
        "reason": (reason if reason is not None else state.reason)[:MESSAGE_LIMIT],
        "startedAt": rfc3339(state.started_at),
        "stepsCompleted": sum(1 for s in state.steps if s.verdict == "pass"),
        "failedChecks": list(state.failed_checks),
    }
    if finished is not None:
        entry["finishedAt"] = rfc3339(finished)
        entry["durationSeconds"] = _duration(state.started_at, finished)
    safe: dict[str, Any] = json_safe(entry)
    return safe


def history_document(entry: Mapping[str, Any], name: object, namespace: object) -> dict[str, Any]:
    """A stored history entry as `rollout history -o json` shows it (older spellings mended)."""
    doc: dict[str, Any] = {"name": name, "namespace": namespace}
    for key in ("id", "stableVersion", "candidateVersion", "outcome", "reason", "startedAt", "finishedAt"):
        doc[key] = entry.get(key)
    doc["outcome"] = outcome_word(entry.get("outcome")) or Outcome.IN_PROGRESS.value
    doc["reason"] = str(entry.get("reason") or "")
    duration = entry.get("durationSeconds")
    doc["durationSeconds"] = duration if isinstance(duration, (int, float)) else _duration_of_times(entry)
    steps = entry.get("stepsCompleted")
    doc["stepsCompleted"] = steps if isinstance(steps, int) else None
    doc["failedChecks"] = [str(c) for c in entry.get("failedChecks") or []]
    return doc


def _duration_of_times(doc: Mapping[str, Any]) -> float | None:
    try:
        return _duration(parse_rfc3339(str(doc["startedAt"])), parse_rfc3339(str(doc["finishedAt"])))
    except (KeyError, ValueError):
        return None


def _steps(raw: object) -> tuple[dict[str, Any], ...]:
    """Saved steps in their full shape (a status drops nulls); unreadable ones left out."""
    steps = []
    for s in raw if isinstance(raw, list) else []:
        try:
            steps.append(StepRecord.from_dict(dict(s)).to_dict())
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(steps)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- the view


@dataclass(frozen=True)
class RolloutView:
    """One rollout as every command shows it (see the module's docstring)."""

    name: str | None
    phase: str
    namespace: str | None = None
    outcome: str | None = None
    reason: str = ""
    message: str = ""
    failed_checks: tuple[str, ...] = ()
    stable_version: str | None = None
    candidate_version: str | None = None
    current_step: int | None = None
    step_count: int | None = None
    weights: Mapping[str, Any] | None = None
    checks: tuple[Mapping[str, Any], ...] = ()
    steps: tuple[Mapping[str, Any], ...] = ()
    started_at: str | None = None
    finished_at: str | None = None
    duration_seconds: float | None = None
    conditions: tuple[Mapping[str, Any], ...] = ()
    generation: int | None = None
    observed_generation: int | None = None

    @classmethod
    def from_state(
        cls, state: RolloutState, policy: Policy | None, *, outcome: str | None = None
    ) -> RolloutView:
        """The view of an engine state (``policy``: the one it runs; ``outcome``: how the
        driver's run ended, when it knows better than the state, e.g. timed out)."""
        sched = schedule(policy) if policy else tuple(s.weight for s in state.steps)
        return cls(
            name=state.name,
            namespace=policy.namespace if policy and policy.namespace else None,
            phase=ROLLING_BACK if state.rollback_pending else state.phase.value,
            outcome=outcome_word(outcome) or (None if (o := outcome_of(state)) is None else o.value),
            reason=state.reason,
            message=status_message(state, policy),
            failed_checks=tuple(state.failed_checks),
            stable_version=policy.stable.version if policy else None,
            candidate_version=policy.candidate.version if policy else None,
            current_step=state.step_index + 1,
            step_count=len(sched),
            weights=state.weights.to_dict(),
            checks=tuple(check_document(c) for c in state.checks),
            steps=tuple(s.to_dict() for s in state.steps),
            started_at=rfc3339(state.started_at),
            finished_at=None if state.finished_at is None else rfc3339(state.finished_at),
            duration_seconds=_duration(state.started_at, state.finished_at),
        )

    @classmethod
    def from_resource(cls, obj: Mapping[str, Any]) -> RolloutView:
        """The view of a ModelRollout as read from the API (its status, else its spec)."""
        meta, status, spec = (_mapping(obj.get(k)) for k in ("metadata", "status", "spec"))
        saved = _mapping(status.get("rollout"))
        phase = str(status.get("phase") or PENDING)
        weights = status.get("weights")
        return cls(
            name=meta.get("name"),
            namespace=meta.get("namespace"),
            phase=phase,
            outcome=OUTCOME_OF_PHASE[Phase(phase)].value if phase in TERMINAL_PHASES else None,
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            failed_checks=tuple(str(c) for c in saved.get("failedChecks") or []),
            stable_version=status.get("stableVersion") or _mapping(spec.get("stable")).get("version"),
            candidate_version=status.get("candidateVersion")
            or _mapping(spec.get("candidate")).get("version"),
            current_step=_int_or_none(status.get("currentStep")),
            step_count=_int_or_none(status.get("stepCount")),
            weights=dict(weights) if isinstance(weights, Mapping) else None,
            checks=tuple(dict(c) for c in status.get("checks") or [] if isinstance(c, Mapping)),
            steps=_steps(saved.get("steps")),
            started_at=status.get("startedAt"),
            finished_at=status.get("finishedAt"),
            duration_seconds=_duration_of_times(status),
            conditions=tuple(dict(c) for c in status.get("conditions") or [] if isinstance(c, Mapping)),
            generation=_int_or_none(meta.get("generation")),
            observed_generation=_int_or_none(status.get("observedGeneration")),
        )

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    def condition(self, type_: str) -> Mapping[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def status_fields(self) -> dict[str, Any]:
        """The fields a ModelRollout's status shares with this view (the same names)."""
        return {
            "phase": self.phase,
            "currentStep": self.current_step,
            "stepCount": self.step_count,
            "weights": dict(self.weights) if self.weights is not None else None,
            "checks": [dict(c) for c in self.checks],
            "stableVersion": self.stable_version,
            "candidateVersion": self.candidate_version,
            "reason": self.reason,
            "message": self.message,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }

    def to_document(self) -> dict[str, Any]:
        """The ``-o json|yaml`` document (every field always present; null when unknown)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "phase": self.phase,
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "failedChecks": list(self.failed_checks),
            "stableVersion": self.stable_version,
            "candidateVersion": self.candidate_version,
            "currentStep": self.current_step,
            "stepCount": self.step_count,
            "weights": dict(self.weights) if self.weights is not None else None,
            "checks": [dict(c) for c in self.checks],
            "steps": [dict(s) for s in self.steps],
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "durationSeconds": self.duration_seconds,
            "conditions": [dict(c) for c in self.conditions],
            "generation": self.generation,
            "observedGeneration": self.observed_generation,
        }

    def history_row(self) -> dict[str, Any]:
        """This (running) rollout as a `rollout history` row."""
        return history_document(
            {
                "stableVersion": self.stable_version,
                "candidateVersion": self.candidate_version,
                "outcome": self.outcome,
                "reason": self.message,
                "startedAt": self.started_at,
                "finishedAt": self.finished_at,
            },
            self.name,
            self.namespace,
        )


def history_documents(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A ModelRollout's past rollouts, and the one in progress, as `rollout history` rows."""
    view = RolloutView.from_resource(obj)
    status = _mapping(obj.get("status"))
    rows = [
        history_document(h, view.name, view.namespace)
        for h in status.get("history") or []
        if isinstance(h, Mapping)
    ]
    if status.get("phase") and not view.terminal and view.phase not in (INVALID, PENDING):
        rows.append(view.history_row())
    return rows


__all__ = [
    "INVALID",
    "PENDING",
    "PHASES",
    "ROLLING_BACK",
    "TERMINAL_PHASES",
    "RolloutView",
    "check_document",
    "dump",
    "history_document",
    "history_documents",
    "history_entry",
    "json_safe",
    "outcome_word",
    "output_schema",
    "parse_rfc3339",
    "rfc3339",
    "status_message",
]
