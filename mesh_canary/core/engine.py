"""The rollout engine: a pure state machine over plain data.

Every rule of a rollout lives here: steps, waiting, judging, promoting, rolling back,
gates and deadlines. Drivers (the CLI, the controller, the simulator) call `start`, `tick`
and `command` with the time and the latest observation, carry out the returned actions in
order, then save the returned state. No I/O and no clock: the same inputs give the same
decision, so what `simulate` shows is what production does.

Carrying out a Decision: execute `actions` in order (a rollback's weight write is always
the first action, so nothing can delay it), then save `state`. A driver that crashes
between the two resumes from the older state; it never re-writes weights on resume, and it
compares the live weights with that state first (a rollback carries its own record on the
route), so a rollback that went through is never undone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from mesh_canary.checks import REGISTRY
from mesh_canary.core import audit, timeline
from mesh_canary.core.durations import format_duration
from mesh_canary.core.frozen import replace
from mesh_canary.core.hooks import (
    CONFIRM_PROMOTION,
    DECIDING,
    DURING_STEP,
    ON_ROLLBACK,
    POST_ROLLOUT,
    PRE_ROLLOUT,
    PRE_STEP,
    HookResult,
)
from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult, Judge, JudgeContext, Tally, Verdict
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.errors import EXIT_OK, EXIT_ROLLED_BACK, EXIT_UNFINISHED


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    WAITING_FOR_APPROVAL = "WaitingForApproval"
    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    # Someone outside mesh-canary (a person, a GitOps sync) moved traffic towards stable:
    # the rollout stopped without writing over their weights.
    ABORTED = "Aborted"


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED})


class Outcome(StrEnum):
    """How a rollout ended (or why a driver stopped following it): the one spelling of
    every ``outcome`` field (run, rollout status/history, simulate, report, CR history)."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"  # stopped without writing: someone moved traffic towards stable
    TIMED_OUT = "timed_out"  # the driver's time ran out before a decision
    PAUSED = "paused"  # the driver stopped while the rollout waits for a person
    SUPERSEDED = "superseded"  # a new spec replaced the rollout before it finished
    IN_PROGRESS = "in_progress"  # history: a rollout that did not finish (or still runs)

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for a run that ended so (docs/cli.md): 0 promoted, 3 rolled
        back, 4 did not finish."""
        return {Outcome.PROMOTED: EXIT_OK, Outcome.ROLLED_BACK: EXIT_ROLLED_BACK}.get(self, EXIT_UNFINISHED)


# The phase -> outcome mapping, written once: a terminal phase's outcome.
OUTCOME_OF_PHASE: dict[Phase, Outcome] = {
    Phase.SUCCEEDED: Outcome.PROMOTED,
    Phase.ROLLED_BACK: Outcome.ROLLED_BACK,
    Phase.ABORTED: Outcome.ABORTED,
}


def outcome_of(state: RolloutState) -> Outcome | None:
    """The outcome of a finished rollout; None while it is not finished (a rollback whose
    write is still retried is not finished)."""
    decided = state.phase in TERMINAL and not state.rollback_pending  # a fallback watch is after it
    return OUTCOME_OF_PHASE.get(state.phase) if decided else None


class Command(StrEnum):
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    APPROVE = "approve"
    # Skip the remaining steps: promote at the next analysis unless a check fails in it.
    PROMOTE_FULL = "promoteFull"
    # Traffic from the fallback back to stable (core/fallback.py): only a person decides it.
    RESTORE_STABLE = "restoreStable"


# ---- actions: what the driver must do, in order ------------------------------------


@dataclass(frozen=True)
class SetWeights:
    weights: Weights
    reason: str
    rollback: bool = False  # checks nothing first; retried until it goes through


@dataclass(frozen=True)
class Announce:
    kind: str  # Started | StepAdvanced | Holding | Paused | Resumed | Approved |
    #            WaitingForApproval | Switched | Promoted | RolledBack | RollbackFailing |
    #            Aborted | FellBack | RestoredStable (core/fallback.py)
    message: str
    severity: str = "info"


@dataclass(frozen=True)
class RunHooks:
    """Call the policy's hooks of ``phase`` (after the writes and the save). A deciding
    phase's answer comes back through ``hook_answered``; the others are reported only."""

    phase: str


Action = SetWeights | Announce | RunHooks


# ---- state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    weight: int
    start_s: float
    end_s: float | None = None
    verdict: str | None = None  # pass | fail | None while the step runs

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "startS": self.start_s, "endS": self.end_s, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        return cls(int(d["weight"]), float(d["startS"]), d.get("endS"), d.get("verdict"))


@dataclass(frozen=True)
class RolloutState:
    """Everything needed to resume a rollout exactly. Times are the driver's clock (s)."""

    name: str
    strategy: str
    phase: Phase
    step_index: int  # canary: index into steps; blueGreen: 0 preview, 1 after the switch
    weights: Weights
    started_at: float
    step_started_at: float  # also the start of the metrics window being judged
    last_data_at: float  # last tick at which the candidate had data
    last_tick_at: float | None = None
    paused: bool = False
    approved: bool = False
    at_gate: bool = False  # all checks ready before promotion, waiting for approval
    finished_at: float | None = None
    reason: str = ""
    failed_checks: tuple[str, ...] = ()
    checks: tuple[CheckResult, ...] = ()  # the latest verdict of every check
    steps: tuple[StepRecord, ...] = ()
    stable_baseline: Observation | None = None  # blueGreen: stable's preview window
    # Completed canary steps' last windows with the candidate's share: evidence carried forward.
    earlier_windows: tuple[tuple[float, Observation], ...] = ()
    # Each check's latest tally (how overdispersed its counts are), carried to the next tick.
    tallies: tuple[Tally, ...] = ()
    policy_fingerprint: str = ""
    ticks: int = 0
    # The rollback was decided but its write of 100% stable has not gone through yet: the
    # driver retries it (no later than ``retry_at``) and the rollout is not finished.
    rollback_pending: bool = False
    retry_at: float | None = None
    # Who owns the route (an annotation on the VirtualService, a lock for the local mesh);
    # kept so that a resume with the same state keeps the ownership.
    run_id: str = ""
    # The bounded per-tick history the dashboard and the report draw (core/timeline.py).
    timeline: Mapping[str, Any] = field(default_factory=dict)
    # onTimeout pause: when the current step paused at its maxStepDuration, or was resumed
    # after it (its next deadline counts from there; None: it did not pause; a time before
    # step_started_at belongs to an earlier step), and whether a person approved advancing
    # past it. ``timeouts``: steps advanced unproven at their timeout.
    timeout_paused_at: float | None = None
    timeout_approved: bool = False
    timeouts: int = 0
    # A person ordered a full promotion (`rollout promote --full`): the next analysis with
    # data and no failed check promotes, skipping the remaining steps and gates.
    promote_full: bool = False
    # After a rollback to stable, stable is judged against its limits until then (a policy's
    # fallback.watchAfterRollback; core/fallback.py); None: not watching.
    watch_until: float | None = None
    # Step hooks: the deciding phase whose answer the rollout waits for ("" none), the
    # window of the advance it gates, and the latest answer of each deciding phase per step
    # ("preStep@1": a HookResult as a dict), so a restart resumes exactly.
    awaiting_hook: str = ""
    held_window: Observation | None = None
    hook_results: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # The audit record (core/audit.py): every decision, bounded; how many older ones were dropped.
    audit: tuple[Mapping[str, Any], ...] = ()
    audit_dropped: int = 0

    def audited(self, *entries: Mapping[str, Any]) -> RolloutState:
        """This state with ``entries`` appended to its audit record."""
        record, dropped = audit.appended(self.audit, self.audit_dropped, entries)
        return replace(self, audit=record, audit_dropped=dropped)

    @property
    def terminal(self) -> bool:
        """Finished: a final phase whose last write went through (and no fallback watch left)."""
        return self.phase in TERMINAL and not self.rollback_pending and self.watch_until is None

    @property
    def window_start(self) -> float:
        """The metrics window being judged starts with the step (a watch: with the rollback)."""
        if self.watch_until is not None and self.finished_at is not None:
            return self.finished_at
        return self.step_started_at

    def next_tick_at(self, policy: Policy) -> float:
        if self.rollback_pending and self.retry_at is not None:
            return self.retry_at
        base = self.last_tick_at if self.last_tick_at is not None else self.step_started_at
        return base + policy.analysis.interval_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "phase": self.phase.value,
            "stepIndex": self.step_index,
            "weights": self.weights.to_dict(),
            "startedAt": self.started_at,
            "stepStartedAt": self.step_started_at,
            "lastDataAt": self.last_data_at,
            "lastTickAt": self.last_tick_at,
            "paused": self.paused,
            "approved": self.approved,
            "atGate": self.at_gate,
            "finishedAt": self.finished_at,
            "reason": self.reason,
            "failedChecks": list(self.failed_checks),
            "checks": [c.to_dict() for c in self.checks],
            "steps": [s.to_dict() for s in self.steps],
            "stableBaseline": self.stable_baseline.to_dict() if self.stable_baseline else None,
            "earlierWindows": [{"share": sh, "window": w.to_dict()} for sh, w in self.earlier_windows],
            "tallies": [t.to_dict() for t in self.tallies],
            "policyFingerprint": self.policy_fingerprint,
            "ticks": self.ticks,
            "rollbackPending": self.rollback_pending,
            "retryAt": self.retry_at,
            "runId": self.run_id,
            "timeline": dict(self.timeline),
            "timeoutPausedAt": self.timeout_paused_at,
            "timeoutApproved": self.timeout_approved,
            "timeouts": self.timeouts,
            "promoteFull": self.promote_full,
            "watchUntil": self.watch_until,
            "awaitingHook": self.awaiting_hook,
            "heldWindow": self.held_window.to_dict() if self.held_window else None,
            "hookResults": {k: dict(v) for k, v in self.hook_results.items()},
            "audit": [dict(e) for e in self.audit],
            "auditDropped": self.audit_dropped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutState:
        base = d.get("stableBaseline")
        return cls(
            name=d["name"],
            strategy=d["strategy"],
            phase=Phase(d["phase"]),
            step_index=int(d["stepIndex"]),
            weights=Weights.from_dict(d["weights"]),
            started_at=float(d["startedAt"]),
            step_started_at=float(d["stepStartedAt"]),
            last_data_at=float(d["lastDataAt"]),
            last_tick_at=d.get("lastTickAt"),
            paused=bool(d.get("paused", False)),
            approved=bool(d.get("approved", False)),
            at_gate=bool(d.get("atGate", False)),
            finished_at=d.get("finishedAt"),
            reason=d.get("reason", ""),
            failed_checks=tuple(d.get("failedChecks", ())),
            checks=tuple(CheckResult.from_dict(c) for c in d.get("checks", ())),
            steps=tuple(StepRecord.from_dict(s) for s in d.get("steps", ())),
            stable_baseline=Observation.from_dict(base) if base else None,
            earlier_windows=tuple(
                (float(w["share"]), Observation.from_dict(w["window"])) for w in d.get("earlierWindows", ())
            ),
            tallies=tuple(Tally.from_dict(t) for t in d.get("tallies", ())),
            policy_fingerprint=d.get("policyFingerprint", ""),
            ticks=int(d.get("ticks", 0)),
            rollback_pending=bool(d.get("rollbackPending", False)),
            retry_at=d.get("retryAt"),
            run_id=str(d.get("runId") or ""),
            timeline=d["timeline"] if isinstance(d.get("timeline"), Mapping) else {},
            timeout_paused_at=d.get("timeoutPausedAt"),
            timeout_approved=bool(d.get("timeoutApproved", False)),
            timeouts=int(d.get("timeouts", 0)),
            promote_full=bool(d.get("promoteFull", False)),
            watch_until=d.get("watchUntil"),
            awaiting_hook=str(d.get("awaitingHook") or ""),
            held_window=Observation.from_dict(d["heldWindow"]) if d.get("heldWindow") else None,
            hook_results=dict(d["hookResults"]) if isinstance(d.get("hookResults"), Mapping) else {},
            audit=tuple(e for e in d.get("audit") or () if isinstance(e, Mapping)),
            audit_dropped=int(d.get("auditDropped") or 0),
        )


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    actions: tuple[Action, ...] = field(default_factory=tuple)

    @property
    def weight_writes(self) -> list[SetWeights]:
        return [a for a in self.actions if isinstance(a, SetWeights)]

    @property
    def announcements(self) -> list[Announce]:
        return [a for a in self.actions if isinstance(a, Announce)]


# ---- the rules ------------------------------------------------------------------------


def policy_fingerprint(policy: Policy) -> str:
    """Identifies what is being rolled out: a changed candidate restarts the rollout."""
    spec = policy.document.get("spec", {}) if policy.document else {}
    key = json.dumps(
        {"spec": spec, "candidate": policy.candidate.version, "stable": policy.stable.version},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def schedule(policy: Policy) -> tuple[int, ...]:
    """Candidate weight per step. blueGreen: 0 while previewing (mirrored), then 100."""
    return strategy_of(policy).schedule(policy)


# With evidence carried across steps, the last judged step is also judged on its own window
# (so its own data cannot hide a collapse). That test gets this share of the rollout's
# false-rollback budget, the carried evidence the rest: the total stays 1 - confidence.
# Small, because its main work is holding (which spends nothing), not failing.
OWN_WINDOW_BUDGET = 0.1


def _carries_evidence(strategy: Strategy, policy: Policy, judge: Judge) -> bool:
    """Does the judge carry evidence across canary steps (so the last one's own window is
    judged too)? Judges that judge every window alone lack or clear ``carries_evidence``."""
    carries = getattr(judge, "carries_evidence", False) is True
    return carries and strategy.carries_evidence(policy)


def start(policy: Policy, now: float) -> Decision:
    strategy = strategy_of(policy)
    weights = strategy.weights(policy, 0)
    state = RolloutState(
        name=policy.name,
        strategy=policy.strategy,
        phase=Phase.PROGRESSING,
        step_index=0,
        weights=weights,
        started_at=now,
        step_started_at=now,
        last_data_at=now,
        steps=(StepRecord(weight=strategy.schedule(policy)[0], start_s=0.0),),
        policy_fingerprint=policy_fingerprint(policy),
    )
    if policy.hooks.pre_rollout:
        # Nothing is written until the preRollout hooks answer: traffic stays on stable.
        waiting = replace(state, weights=ALL_STABLE, awaiting_hook=PRE_ROLLOUT)
        return Decision(waiting, (RunHooks(PRE_ROLLOUT),))
    return _started(policy, state, now)


def _started(policy: Policy, state: RolloutState, now: float) -> Decision:
    """The first write. Its step (and its window) starts now, not when the hooks were asked."""
    strategy = strategy_of(policy)
    weights = strategy.weights(policy, 0)
    first = StepRecord(weight=strategy.schedule(policy)[0], start_s=now - state.started_at)
    state = replace(
        state, weights=weights, awaiting_hook="", step_started_at=now, last_data_at=now, steps=(first,)
    )
    what = strategy.started(weights)
    msg = f"started rolling out {policy.candidate.version} over {policy.stable.version}: {what}"
    return Decision(state, (SetWeights(weights, "start"), Announce("Started", msg)))


def waiting_to_start(state: RolloutState) -> bool:
    """Nothing written yet: the rollout waits for its preRollout hooks."""
    return state.awaiting_hook == PRE_ROLLOUT and not state.terminal


def hook_answered(policy: Policy, state: RolloutState, result: HookResult, now: float) -> Decision:
    """A deciding hook's answer, as data: start, advance, hold or stop.

    preRollout: ok starts (the first write), a failure ends the rollout with nothing
    written. preStep: ok moves the weight, a failure rolls back to 100% stable.
    confirmPromotion: ok promotes; anything else holds the last step, and past its
    maxStepDuration ``analysis.onTimeout`` decides. An answer nobody waits for is ignored."""
    if state.terminal or state.rollback_pending or state.awaiting_hook != result.phase:
        return Decision(state)
    results = {**state.hook_results, _hook_key(result.phase, state): result.to_dict()}
    window = state.held_window
    state = replace(state, awaiting_hook="", held_window=None, hook_results=results)
    state = state.audited(hook_entry(result, now))
    if result.phase == PRE_ROLLOUT:
        if result.ok:
            return _started(policy, state, now)
        reason = f"the preRollout hook failed: {result.reason}; nothing was written, traffic untouched"
        new = _ended(state, now, Phase.ROLLED_BACK, reason, (PRE_ROLLOUT,), ALL_STABLE)
        return Decision(new, (Announce("HookFailed", f"stopped: {reason}", severity="warning"),))
    if result.phase == PRE_STEP and not result.ok:
        return _roll_back(state, now, f"the preStep hook failed: {result.reason}", (PRE_STEP,))
    strategy = strategy_of(policy)
    if window is None or state.paused:
        return Decision(state)  # asked again at the next tick that finds the step ready
    if result.ok:
        return _gated(policy, state, now, window, strategy.advance(policy, state, now, window))
    # confirmPromotion said not yet: hold; past the step's deadline onTimeout decides.
    timed_out = _check_step_deadline(strategy, policy, state, now, window)
    if timed_out is not None and (timed_out.actions or timed_out.state.phase is not state.phase):
        return timed_out
    return Decision(replace(state, reason=f"waiting for the confirmPromotion hook: {result.reason}"))


def hook_entry(result: HookResult, now: float) -> dict[str, Any]:
    """A hook's answer in the audit record (its calls: name, host, status or error)."""
    return {**result.to_dict(), "at": now, "kind": "hook"}


def _hook_key(phase: str, state: RolloutState) -> str:
    return f"{phase}@{state.step_index}"


def _hook_passed(state: RolloutState, phase: str) -> bool:
    return bool(state.hook_results.get(_hook_key(phase, state), {}).get("ok"))


def _gated(
    policy: Policy,
    state: RolloutState,
    now: float,
    window: Observation,
    decision: Decision,
    timed_out: bool = False,
) -> Decision:
    """``decision`` moves traffic forward (or promotes): first the hooks that gate it.
    confirmPromotion gates a promotion (not one onTimeout or a person decided on), preStep
    every later weight move; each is asked once per step and its answer kept."""
    promoting = decision.state.phase is Phase.SUCCEEDED
    moving = any(not w.rollback for w in decision.weight_writes)
    if promoting and timed_out and policy.hooks.confirm_promotion:
        # onTimeout or a person decided on this promotion: the gate is waived, and stays
        # waived while a preStep hook is asked.
        waived = HookResult(CONFIRM_PROMOTION, True, "not asked: promoted at the step's timeout", now)
        state = replace(
            state, hook_results={**state.hook_results, _hook_key(CONFIRM_PROMOTION, state): waived.to_dict()}
        )
    gates = ((CONFIRM_PROMOTION,) if promoting and not timed_out else ()) + ((PRE_STEP,) if moving else ())
    for phase in gates:
        if policy.hooks.calls(phase) and not _hook_passed(state, phase):
            return Decision(replace(state, awaiting_hook=phase, held_window=window), (RunHooks(phase),))
    return decision


def after_hooks(policy: Policy, state: RolloutState) -> tuple[RunHooks, ...]:
    """The reporting hooks of a rollout that just finished: onRollback after a rollback,
    postRollout after any end, both only once the write went through; none when it stopped
    before any traffic moved (a failed preRollout hook)."""
    if not state.terminal or PRE_ROLLOUT in state.failed_checks:
        return ()
    phases = ((ON_ROLLBACK,) if state.phase is Phase.ROLLED_BACK else ()) + (POST_ROLLOUT,)
    return tuple(RunHooks(p) for p in phases if policy.hooks.calls(p))


def command(policy: Policy, state: RolloutState, cmd: Command | str, now: float) -> Decision:
    """A person's order: abort, pause, resume, approve, promote in full, or restore stable
    (from the fallback, or ending the watch after a rollback: core/fallback.py)."""
    decision = _command(policy, state, Command(cmd), now)
    if state.terminal:
        return decision  # the record of a finished rollout is closed
    # Every order is recorded, also one that changed nothing (an approval before the gate).
    changed = decision.state is not state
    entry = {"at": now, "kind": "command", "command": Command(cmd).value, "by": "a person"}
    entry.update(phase=decision.state.phase.value, changed=changed)
    return replace(decision, state=decision.state.audited(entry))


def _command(policy: Policy, state: RolloutState, cmd: Command, now: float) -> Decision:
    if state.rollback_pending:
        return retry_rollback(state)
    if cmd is Command.RESTORE_STABLE:
        from mesh_canary.core import fallback

        return fallback.restore_stable(policy, state)
    if state.phase in TERMINAL:  # finished (or only watching stable after a rollback)
        return Decision(state)
    if cmd is Command.ABORT:
        return _roll_back(state, now, "aborted by a person (manual rollback)", ("manual",))
    if cmd is Command.PAUSE:
        if state.paused:
            return Decision(state)
        new = replace(state, paused=True, phase=Phase.PAUSED)
        return Decision(
            new, (Announce("Paused", f"paused at {state.weights.candidate}% (checks still run)"),)
        )
    if cmd is Command.RESUME:
        if not state.paused:
            return Decision(state)
        # Back to where the pause found it: at the gate only if it was waiting there.
        phase = Phase.WAITING_FOR_APPROVAL if state.at_gate else Phase.PROGRESSING
        new = replace(state, paused=False, phase=phase)
        if _timeout_paused_in_step(state):
            new = replace(new, timeout_paused_at=now)  # another maxStepDuration from now
        return Decision(new, (Announce("Resumed", f"resumed at {state.weights.candidate}%"),))
    if cmd is Command.PROMOTE_FULL:
        # Nothing is written now: the next analysis judges first (a failed check still rolls
        # back, no data still holds), then promotes; a pause or a gate no longer holds it.
        phase = Phase.PROGRESSING
        new = replace(state, promote_full=True, paused=False, approved=True, at_gate=False, phase=phase)
        words = "full promotion ordered by a person: the remaining steps are skipped at the next analysis"
        return Decision(new, (Announce("PromoteFull", words + " unless a check fails in it"),))
    if _paused_at_timeout(state):
        # Paused at the step's timeout (onTimeout pause): approval advances the step unproven.
        new = replace(state, paused=False, phase=Phase.PROGRESSING, timeout_approved=True)
        return Decision(
            new, (Announce("Approved", "advancing past the step's timeout: approved by a person"),)
        )
    # approve: opens the gate only where the rollout waits at it; an early approval
    # must not skip a gate the person has not seen yet.
    if not state.at_gate:
        return Decision(state)
    new = replace(state, approved=True, at_gate=False)
    if new.phase is Phase.WAITING_FOR_APPROVAL:
        new = replace(new, phase=Phase.PROGRESSING)
    return Decision(new, (Announce("Approved", "promotion approved by a person"),))


def tick(
    policy: Policy,
    state: RolloutState,
    observation: Observation,
    now: float,
    judge: Judge,
) -> Decision:
    """One analysis: judge the step's window and decide to hold, advance or roll back."""
    from mesh_canary.core import fallback

    decision = fallback.watching(policy, state, observation, now, judge) or fallback.then_watch(
        policy, state, _tick(policy, state, observation, now, judge), now
    )
    if decision.state.ticks != state.ticks:  # judged (not a pending rollback's retry)
        decision = replace(decision, state=decision.state.audited(_verdict_entry(state, decision, now)))
    new = decision.state
    if policy.hooks.during_step and not (new.terminal or new.rollback_pending or new.awaiting_hook):
        # Load generation and the like: asked at every analysis, reported, never judged.
        decision = replace(decision, actions=(*decision.actions, RunHooks(DURING_STEP)))
    # Every judged tick leaves a point in the bounded history (core/timeline.py). The
    # history is for people: nothing in it may stop a decision (a rollback above all).
    try:
        points = timeline.after_tick(policy, state, decision.state, observation)
    except Exception:  # pure code; a gap in the history is all a failure costs
        return decision
    return replace(decision, state=replace(decision.state, timeline=points))


def _verdict_entry(before: RolloutState, decision: Decision, now: float) -> dict[str, Any]:
    """A tick in the audit record: every check's verdict with its estimate and bounds, and
    what was decided."""
    new = decision.state
    if new.phase is Phase.ROLLED_BACK:
        decided = "rollback"
    elif new.phase is Phase.SUCCEEDED:
        decided = "promote"
    elif new.step_index != before.step_index:
        decided = "advance"
    elif new.awaiting_hook and not before.awaiting_hook:
        decided = f"ask the {new.awaiting_hook} hook"
    elif new.phase is not before.phase:
        decided = new.phase.value
    else:
        decided = "hold"
    return {
        "at": now,
        "kind": "verdict",
        "step": before.step_index + 1,
        "weight": before.weights.candidate,
        "decision": decided,
        "reason": new.reason if decided != "hold" else "",
        "checks": [audit.check_entry(r) for r in new.checks],
    }


def _tick(
    policy: Policy, state: RolloutState, observation: Observation, now: float, judge: Judge
) -> Decision:
    if state.rollback_pending:
        return retry_rollback(state)  # decided: nothing to judge, only the write to finish
    if state.terminal:
        return Decision(state)
    if waiting_to_start(state):
        return Decision(state, (RunHooks(PRE_ROLLOUT),))  # nothing written yet: nothing to judge
    strategy = strategy_of(policy)  # chosen once per call, from the registry
    state = replace(state, last_tick_at=now, ticks=state.ticks + 1)
    checks = policy.analysis.checks

    no_data = _no_data_reason(observation)
    if no_data is not None:
        results = tuple(
            CheckResult(name=c.name, metric=c.metric, verdict=Verdict.INCONCLUSIVE, reason=no_data)
            for c in checks
        )
        state = replace(state, checks=results)
        silent_for = now - state.last_data_at
        if silent_for >= policy.analysis.no_data_timeout_s:
            return _roll_back(
                state,
                now,
                f"no data: {no_data} for {format_duration(silent_for)} "
                f"(noDataTimeout {format_duration(policy.analysis.no_data_timeout_s)})",
                ("noData",),
            )
        return _check_step_deadline(strategy, policy, state, now) or Decision(state)

    state = strategy.observed(replace(state, last_data_at=now), observation)
    results = _judge_step(strategy, policy, state, observation, judge)
    state = replace(state, checks=results, tallies=_tallies(state.tallies, results))

    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if failed:
        reason = "; ".join(f"{r.name}: {r.reason}" for r in failed)
        from mesh_canary.core import fallback  # stable broken too: the fallback instead

        rollback = _roll_back(state, now, reason, tuple(r.name for r in failed))
        return fallback.instead_of_rollback(policy, rollback, observation, judge)

    if state.promote_full:
        return _promote_full(policy, state, now)

    if state.paused:
        return Decision(state)
    if state.awaiting_hook in DECIDING:
        # Asked and not answered yet: the driver calls in the background and brings the
        # answer to a later tick; the checks keep running meanwhile (a failure rolls back
        # above). The latest window is what the advance will carry forward. A hook that
        # never answers holds no longer than the step's maxStepDuration: then onTimeout decides.
        state = replace(state, held_window=observation)
        timed_out = _check_step_deadline(strategy, policy, replace(state, awaiting_hook=""), now, observation)
        if timed_out is not None and (timed_out.actions or timed_out.state.phase is not state.phase):
            return timed_out
        return Decision(state, (RunHooks(state.awaiting_hook),))

    in_step = now - state.step_started_at
    final_window = strategy.final_window(policy, state.step_index)
    ready = in_step >= strategy.min_duration_s(policy, state.step_index) and all(
        _ready(r, c, final_window) for r, c in zip(results, checks, strict=True)
    )
    held = not ready or _held_for_proof(policy, final_window, results) or _bursting(results, final_window)
    if held:
        return _check_step_deadline(strategy, policy, state, now, observation) or Decision(state)
    return _gated(policy, state, now, observation, strategy.advance(policy, state, now, observation))


def _judge_step(
    strategy: Strategy, policy: Policy, state: RolloutState, observation: Observation, judge: Judge
) -> tuple[CheckResult, ...]:
    """Every check's verdict on the step's window (and, in the last judged step with evidence
    carried forward, on its own window too)."""
    checks = policy.analysis.checks
    ctx = _context(strategy, policy, state, judge)
    results = _judge_safely(judge, checks, observation, ctx)
    if _carries_evidence(strategy, policy, judge) and _last_judged_step(strategy, policy, state):
        alone = replace(
            ctx,
            earlier_windows=(),
            own_window=True,
            alpha=(1.0 - policy.analysis.confidence) * OWN_WINDOW_BUDGET,
        )
        own = _judge_safely(judge, checks, observation, alone)
        results = tuple(_with_own_window(r, o, c) for r, o, c in zip(results, own, checks, strict=True))
    return results


def _judge_safely(
    judge: Judge, checks: Sequence[Check], observation: Observation, ctx: JudgeContext
) -> tuple[CheckResult, ...]:
    """The judge's verdicts; a judge that raises or answers out of shape fails every check:
    a failure to judge is a failed check (roll back, say why), never traffic left as it is."""
    try:
        results = tuple(judge.evaluate(checks, observation, ctx))
        if len(results) != len(checks) or not all(isinstance(r, CheckResult) for r in results):
            raise ValueError(f"the judge gave {len(results)} verdicts for {len(checks)} checks")
    except Exception as e:  # pure code: catching keeps the engine a total function
        why = f"{type(e).__name__}: {e}"
        return tuple(
            CheckResult(
                name=c.name, metric=c.metric, verdict=Verdict.FAIL, reason=f"could not judge {c.name}: {why}"
            )
            for c in checks
        )
    return results


def _tallies(before: tuple[Tally, ...], results: Sequence[CheckResult]) -> tuple[Tally, ...]:
    """The checks' tallies after this tick: the new ones, and the old where a check gave none."""
    new = {r.name: r.tally for r in results if r.tally is not None}
    kept = tuple(t for t in before if t.name not in new)
    return (*kept, *new.values())


def _no_data_reason(obs: Observation) -> str | None:
    if obs.problem:
        return obs.problem
    if obs.candidate.requests <= 0:
        return "no requests reached the candidate"
    return None


def _budget(strategy: Strategy, policy: Policy, judge: Judge) -> float:
    """The false-rollback budget of the windows (the last step's own window's set apart)."""
    budget = 1.0 - policy.analysis.confidence
    return budget * (1.0 - OWN_WINDOW_BUDGET) if _carries_evidence(strategy, policy, judge) else budget


def _context(strategy: Strategy, policy: Policy, state: RolloutState, judge: Judge) -> JudgeContext:
    mirrored = strategy.mirrored(state.step_index)
    share = 0.5 if mirrored else state.weights.candidate / 100.0
    return JudgeContext(
        candidate_share=share,
        alpha=_budget(strategy, policy, judge) / strategy.judged_windows(policy),
        min_requests=policy.analysis.min_requests,
        mirrored=mirrored,
        step_index=state.step_index,
        step_count=len(strategy.schedule(policy)),
        stable_baseline=strategy.baseline(state),
        earlier_windows=state.earlier_windows,
        step_deadline_s=strategy.max_duration_s(policy, state.step_index),
        tallies=state.tallies,
        ticks=True,
        burst_duration_s=policy.analysis.burst_duration_s,
    )


def _label_based(check: Check) -> bool:
    """Is the check judged on labels (ground truth that arrives late)? Its kind says."""
    kind = REGISTRY.get(check.metric)
    return kind is not None and kind.label_based


def _last_judged_step(strategy: Strategy, policy: Policy, state: RolloutState) -> bool:
    """Is this the last judged canary step, with evidence carried from earlier steps?

    Then its own window is judged too: a candidate that collapses in it (4 requests, all
    5xx) must not be promoted on the strength of the earlier steps' healthy traffic. A
    judge that judges every window on its own (the benchmark's stateful rules) already
    does that, and is asked once per tick.
    """
    return strategy.final_window(policy, state.step_index) and bool(state.earlier_windows)


def _with_own_window(carried: CheckResult, own: CheckResult, check: Check) -> CheckResult:
    """A check's verdict in the last judged step: failing on its own window fails it; an
    own window without its minimum samples (labels excepted: they arrive late) or leaning
    to failure holds the step, whatever the carried evidence says."""
    if carried.verdict is Verdict.FAIL:
        return carried
    if own.verdict is Verdict.FAIL:
        return replace(own, reason=f"in the last step's own window: {own.reason}")
    own_ready = own.verdict is Verdict.PASS or (
        not own.leaning_fail and (own.enough_data or _label_based(check))
    )
    if own_ready:
        return carried
    why = "leans to failure" if own.leaning_fail else "does not have its minimum samples yet"
    return replace(
        carried,
        verdict=Verdict.INCONCLUSIVE,
        leaning_fail=carried.leaning_fail or own.leaning_fail,
        enough_data=carried.enough_data and (own.enough_data or own.verdict is Verdict.PASS),
        reason=f"{carried.reason}; held: the last step's own window {why} ({own.reason})",
    )


def _ready(result: CheckResult, check: Check, final_window: bool) -> bool:
    """May the step advance as far as this check is concerned?

    A check that passes is ready. An inconclusive one is ready once it has its minimum
    samples and does not lean towards failure (proving non-inferiority within a tight
    tolerance can take far more traffic than a step sees). Label-based checks need their
    `minLabeled` only before promotion: labels arrive late and slowly at small weights.
    """
    if result.verdict is Verdict.PASS:
        return True
    if result.leaning_fail:
        return False
    if result.enough_data:
        return True
    return _label_based(check) and not final_window


def _bursting(results: Sequence[CheckResult], final_window: bool) -> bool:
    """Is a check setting aside a burst of the candidate's events (checks/dispersion.py)?

    Then a step that is not the promoting one holds its weight: a burst is set aside for at
    most burstDuration, and a real change that looks like one at first must not meet more
    traffic meanwhile. The step's maxStepDuration (then onTimeout) still bounds the hold.
    The promoting step is not held: held at 50% through per-version bursts, a healthy
    candidate met a burst outlasting burstDuration and was rolled back (2 of 300 A/A runs
    with bursts at 200 req/s, bench/decision_quality.py, where promoting had none)."""
    if final_window:
        return False
    return any(r.tally is not None and r.tally.bursting for r in results)


def _label_wait(policy: Policy, state: RolloutState, window: Observation | None) -> str:
    """What the promoting step waits for on label-based checks, and how long that should
    take at the label rate observed in this step's window ("" when it waits for none)."""
    span = 0.0 if window is None else window.at - window.since
    rate = sum(window.candidate.confusion.values()) / span if window is not None and span > 0 else 0.0
    parts = []
    for r, c in zip(state.checks, policy.analysis.checks, strict=False):
        if not _label_based(c) or r.verdict is not Verdict.INCONCLUSIVE:
            continue
        need = c.min_labeled or policy.analysis.min_requests
        if r.enough_data:
            continue
        more = max(need - r.samples, 0.0)
        what = f"{r.name}: {r.samples:.0f} of {need} labelled predictions"
        eta = (
            f"about {format_duration(more / rate)} at {rate:.3g} labels/s"
            if rate > 0
            else "no labels arriving"
        )
        parts.append(f"{what} ({eta})")
    return _LABEL_WAIT + "; ".join(parts) if parts else ""


_LABEL_WAIT = "waiting for labels before promotion: "


def _check_step_deadline(
    strategy: Strategy,
    policy: Policy,
    state: RolloutState,
    now: float,
    window: Observation | None = None,
) -> Decision | None:
    """Still undecided past maxStepDuration: what ``analysis.onTimeout`` says. rollback (fail
    closed, the default); promote: advance (the last step promotes) when no check failed,
    saying what was not proven; pause: wait for a person (resume: another maxStepDuration,
    approve: advance unproven, abort: roll back). ``window``: the step's observation, None
    when there is no data (then nothing advances: missing data is never a pass)."""
    if state.paused or state.at_gate:
        return None
    in_step = now - state.step_started_at
    limit = strategy.max_duration_s(policy, state.step_index)
    paused_here = _timeout_paused_in_step(state)
    if paused_here and state.timeout_approved and window is not None:
        return _advance_at_timeout(
            strategy, policy, state, now, window, "approved by a person after its timeout"
        )
    deadline = limit if not paused_here else (state.timeout_paused_at or 0.0) - state.step_started_at + limit
    if in_step < deadline:
        promoting = window is not None and strategy.final_window(policy, state.step_index)
        waiting = _label_wait(policy, state, window) if promoting else ""
        stale = state.reason.startswith(_LABEL_WAIT) and not waiting
        return Decision(replace(state, reason=waiting)) if waiting or stale else None
    holding = [r.name for r in state.checks if r.verdict is not Verdict.PASS]
    why = ", ".join(holding) if holding else "no verdict"
    what = (
        f"step {state.step_index + 1} at {state.weights.candidate}% still inconclusive after "
        f"{format_duration(in_step)} (maxStepDuration {format_duration(limit)}): {why}"
    )
    mode = policy.analysis.on_timeout
    unlabelled = _without_labels(policy, state) if strategy.final_window(policy, state.step_index) else []
    if mode == "promote" and window is not None and not unlabelled:
        return _advance_at_timeout(strategy, policy, state, now, window, f"at its timeout ({what})")
    if mode == "promote" and unlabelled:
        # Label-aware pacing: never promote before label-based checks have minLabeled.
        what += f"; not promoted without labels: {', '.join(unlabelled)}"
    if mode == "pause":
        return _pause_at_timeout(state, now, what)
    return _roll_back(state, now, what, ("stepTimeout",))


def _without_labels(policy: Policy, state: RolloutState) -> list[str]:
    """Label-based checks short of their minLabeled: "accuracy (40 of 100 labels)"."""
    return [
        f"{r.name} ({r.samples:.0f} of {c.min_labeled or policy.analysis.min_requests} labels)"
        for r, c in zip(state.checks, policy.analysis.checks, strict=False)
        if _label_based(c) and not r.enough_data and r.verdict is not Verdict.PASS
    ]


def _timeout_paused_in_step(state: RolloutState) -> bool:
    """Did the current step pause at its timeout (onTimeout pause)?"""
    return state.timeout_paused_at is not None and state.timeout_paused_at >= state.step_started_at


def _paused_at_timeout(state: RolloutState) -> bool:
    """Paused now because the step timed out (not by a person's pause)?"""
    return state.paused and _timeout_paused_in_step(state) and not state.timeout_approved


def _pause_at_timeout(state: RolloutState, now: float, what: str) -> Decision:
    """onTimeout pause: checks keep running (a failure still rolls back); a person decides."""
    waited = format_duration(now - state.step_started_at)
    reason = (
        f"paused: {what}; the candidate holds {state.weights.candidate}% for {waited} so far and "
        "waits for a person: `mesh-canary rollout resume` (wait another maxStepDuration), "
        "`approve` (advance unproven) or `abort` (roll back)"
    )
    new = replace(state, paused=True, phase=Phase.PAUSED, timeout_paused_at=now, reason=reason)
    return Decision(new, (Announce("Paused", reason, severity="warning"),))


def _advance_at_timeout(
    strategy: Strategy, policy: Policy, state: RolloutState, now: float, window: Observation, why: str
) -> Decision:
    """Advance a step no check failed, unproven: counted, and said in every message."""
    counted = replace(state, timeouts=state.timeouts + 1, timeout_paused_at=None, timeout_approved=False)
    decision = _gated(
        policy, state, now, window, strategy.advance(policy, counted, now, window), timed_out=True
    )
    if decision.state.awaiting_hook:
        return decision  # the preStep hook first; the timeout is counted when it moves
    if decision.state.phase is Phase.SUCCEEDED:
        return decision  # _finish says it: the reason counts the unproven steps and checks
    note = f"advanced unproven {why}; {_not_proven_words(policy, state.checks)}"
    actions = tuple(
        replace(a, message=f"{a.message} ({note})") if isinstance(a, Announce) else a
        for a in decision.actions
    )
    return Decision(replace(decision.state, reason=note), actions)


def _held_for_proof(policy: Policy, final_window: bool, results: Sequence[CheckResult]) -> bool:
    """promotion: proven: the step whose success promotes waits until every check passes."""
    return policy.analysis.promotion == "proven" and final_window and not all(r.proven for r in results)


def _not_proven_words(policy: Policy, results: Sequence[CheckResult]) -> str:
    """ "not proven: accuracy (a drop of up to 2.1 points is not ruled out), ..." at the
    policy's confidence; "" when every check is proven."""
    unproven = [r for r in results if not r.proven]
    if not unproven:
        return ""
    level = f"{100.0 * policy.analysis.confidence:g}%"
    parts = [f"{r.name} ({r.not_ruled_out} is not ruled out)" for r in unproven]
    return f"not proven: {', '.join(parts)} (at {level})"


def promotion_words(policy: Policy, state: RolloutState) -> str:
    """Why a promotion happened, honestly: "all checks passed" only when every check proved
    the candidate within tolerance; otherwise what no check found and what was not proven,
    and how many steps advanced unproven at their timeout."""
    results = state.checks
    if results and all(r.proven for r in results) and state.timeouts == 0:
        return "all checks passed"
    words = f"no check found a regression; {_not_proven_words(policy, results)}".rstrip("; ")
    if state.timeouts:
        words += f"; {state.timeouts} step(s) advanced unproven at their maxStepDuration"
    return words


def _step_verdict(state: RolloutState) -> str:
    """A step record's verdict when it advances: pass only when every check was proven."""
    return "pass" if state.checks and all(r.proven for r in state.checks) else "advanced"


def _waiting_for_approval(policy: Policy, state: RolloutState) -> bool:
    return policy.approval == "beforePromotion" and not state.approved


def _close_step(state: RolloutState, now: float, verdict: str) -> tuple[StepRecord, ...]:
    if not state.steps:
        return state.steps
    last = replace(state.steps[-1], end_s=now - state.started_at, verdict=verdict)
    return (*state.steps[:-1], last)


def _at_gate(state: RolloutState) -> Decision:
    """Ready to promote but not approved yet: wait at the gate (announced once)."""
    if state.at_gate:
        return Decision(state)
    new = replace(state, phase=Phase.WAITING_FOR_APPROVAL, at_gate=True)
    return Decision(
        new,
        (Announce("WaitingForApproval", "all checks ready: waiting for `mesh-canary rollout approve`"),),
    )


def _enter_step(
    strategy: Strategy,
    policy: Policy,
    state: RolloutState,
    now: float,
    earlier: tuple[tuple[float, Observation], ...],
) -> RolloutState:
    """The state in the next step: its weights, the closed step's record, a new window."""
    nxt = state.step_index + 1
    record = StepRecord(weight=strategy.schedule(policy)[nxt], start_s=now - state.started_at)
    return replace(
        state,
        phase=Phase.PROGRESSING,
        step_index=nxt,
        weights=strategy.weights(policy, nxt),
        step_started_at=now,
        steps=(*_close_step(state, now, _step_verdict(state)), record),
        earlier_windows=earlier,
    )


def _finish(
    policy: Policy, state: RolloutState, now: float, weights_to_write: Weights | None = None
) -> Decision:
    weights = weights_to_write or Weights.candidate_at(100)
    steps = _close_step(state, now, _step_verdict(state))
    words = promotion_words(policy, state)
    new = replace(
        state,
        phase=Phase.SUCCEEDED,
        weights=weights,
        finished_at=now,
        reason=words,
        steps=steps,
    )
    msg = f"promoted {policy.candidate.version}: 100% of traffic, {words}"
    actions: tuple[Action, ...] = (Announce("Promoted", msg),)
    if weights_to_write is not None:
        actions = (SetWeights(weights, "promote"), *actions)
    return Decision(new, actions)


def _promote_full(policy: Policy, state: RolloutState, now: float) -> Decision:
    """A person's full promotion, after an analysis with data in which no check failed."""
    done = _finish(policy, state, now, Weights.candidate_at(100))
    words = (
        f"promoted by a person (rollout promote --full) at {state.weights.candidate}%, skipping the "
        f"remaining steps; no check failed in the last analysis ({promotion_words(policy, state)})"
    )
    new = replace(done.state, reason=words, promote_full=False)
    msg = f"promoted {policy.candidate.version}: 100% of traffic, {words}"
    return Decision(new, (SetWeights(new.weights, "promote --full"), Announce("Promoted", msg)))


def _ended(
    state: RolloutState,
    now: float,
    phase: Phase,
    reason: str,
    failed: Sequence[str],
    weights: Weights | None = None,
) -> RolloutState:
    """``state`` ended unpromoted: its step closed as failed, the reason and checks recorded."""
    return replace(
        state,
        phase=phase,
        weights=state.weights if weights is None else weights,
        paused=False,
        finished_at=now,
        reason=reason,
        failed_checks=tuple(failed),
        steps=_close_step(state, now, "fail"),
        awaiting_hook="",
        held_window=None,
    )


def _roll_back(state: RolloutState, now: float, reason: str, failed: Sequence[str]) -> Decision:
    new = _ended(state, now, Phase.ROLLED_BACK, reason, failed, ALL_STABLE)
    # The write of 100% stable comes first: nothing may delay it.
    return Decision(
        new,
        (
            SetWeights(ALL_STABLE, reason, rollback=True),
            Announce("RolledBack", f"rolled back to 100% stable: {reason}", severity="warning"),
        ),
    )


# ---- strategies: how a rollout moves traffic, one object each ----------------------


class Strategy(Protocol):
    """What differs between rollout strategies; the engine asks, never compares names.

    A strategy is stateless (everything it needs is in the policy and the state) and is
    chosen once per call from ``STRATEGIES`` by the policy's ``strategy``. A new strategy
    is one class here plus one line in ``STRATEGIES`` (and its name in the schema)."""

    name: str

    def schedule(self, policy: Policy) -> tuple[int, ...]:
        """The candidate's weight in every step; the last one is 100."""
        ...

    def weights(self, policy: Policy, index: int) -> Weights:
        """The weights to write on entering step ``index``."""
        ...

    def min_duration_s(self, policy: Policy, index: int) -> float: ...

    def max_duration_s(self, policy: Policy, index: int) -> float: ...

    def judged_windows(self, policy: Policy) -> int:
        """How many windows share the rollout's false-rollback budget."""
        ...

    def carries_evidence(self, policy: Policy) -> bool:
        """May a judge carry evidence across steps (so the last one's own window is judged too)?"""
        ...

    def final_window(self, policy: Policy, index: int) -> bool:
        """Is step ``index`` the last one judged before promotion?"""
        ...

    def mirrored(self, index: int) -> bool:
        """Is step ``index`` judged on mirrored (shadow) traffic rather than a live share?"""
        ...

    def baseline(self, state: RolloutState) -> Observation | None:
        """Stable's window that relative checks compare with, when not the same window's."""
        ...

    def observed(self, state: RolloutState, observation: Observation) -> RolloutState:
        """What a window with data leaves in the state before it is judged."""
        ...

    def started(self, weights: Weights) -> str:
        """What the first step does, for people."""
        ...

    def advance(self, policy: Policy, state: RolloutState, now: float, window: Observation) -> Decision:
        """Every check is ready in ``state``'s step (judged on ``window``): move on."""
        ...


def _judged_steps(policy: Policy) -> int:
    return sum(1 for w in policy.canary.steps if w < 100)


class Canary:
    """Live traffic in steps (``canary.steps``), each judged on its window with the earlier
    steps' evidence carried forward; entering the last step (100%) is the promotion."""

    name = "canary"

    def schedule(self, policy: Policy) -> tuple[int, ...]:
        return policy.canary.steps

    def weights(self, policy: Policy, index: int) -> Weights:
        return Weights.candidate_at(policy.canary.steps[index])

    def min_duration_s(self, policy: Policy, index: int) -> float:
        return policy.canary.min_step_duration_s

    def max_duration_s(self, policy: Policy, index: int) -> float:
        return policy.canary.max_step_duration_s

    def judged_windows(self, policy: Policy) -> int:
        return max(_judged_steps(policy), 1)

    def carries_evidence(self, policy: Policy) -> bool:
        return _judged_steps(policy) >= 2

    def final_window(self, policy: Policy, index: int) -> bool:
        return index + 1 == len(policy.canary.steps) - 1

    def mirrored(self, index: int) -> bool:
        return False

    def baseline(self, state: RolloutState) -> Observation | None:
        return None

    def observed(self, state: RolloutState, observation: Observation) -> RolloutState:
        return state

    def started(self, weights: Weights) -> str:
        return f"{weights.candidate}% of traffic to the candidate"

    def advance(self, policy: Policy, state: RolloutState, now: float, window: Observation) -> Decision:
        steps = policy.canary.steps
        nxt = state.step_index + 1
        promoting = steps[nxt] == 100 if nxt < len(steps) else True
        if promoting and _waiting_for_approval(policy, state):
            return _at_gate(state)
        carried = (*state.earlier_windows, (state.weights.candidate / 100.0, window))
        new = _enter_step(self, policy, state, now, carried)
        if promoting:
            return _finish(policy, new, now, weights_to_write=new.weights)
        msg = (
            f"step {nxt + 1}/{len(steps)}: {new.weights.candidate}% of traffic to {policy.candidate.version}"
        )
        return Decision(new, (SetWeights(new.weights, f"step {nxt + 1}"), Announce("StepAdvanced", msg)))


class BlueGreen:
    """The candidate previews on mirrored traffic (step 0, 0% live), then takes all traffic
    but ``holdbackPercent`` at once (step 1); through the post-switch window, in which a
    failed check switches back, the holdback on stable is the concurrent control relative
    checks compare with (without one, stable's preview window), then the candidate takes 100%."""

    name = "blueGreen"

    def schedule(self, policy: Policy) -> tuple[int, ...]:
        return (0, 100)

    def weights(self, policy: Policy, index: int) -> Weights:
        if index == 0:
            return Weights.candidate_at(0, mirror_percent=policy.blue_green.mirror_percent)
        return Weights.candidate_at(100 - policy.blue_green.holdback_percent)

    def min_duration_s(self, policy: Policy, index: int) -> float:
        bg = policy.blue_green
        return bg.preview_duration_s if index == 0 else bg.post_switch_window_s

    def max_duration_s(self, policy: Policy, index: int) -> float:
        return max(self.min_duration_s(policy, index), policy.canary.max_step_duration_s)

    def judged_windows(self, policy: Policy) -> int:
        return 2

    def carries_evidence(self, policy: Policy) -> bool:
        return False

    def final_window(self, policy: Policy, index: int) -> bool:
        return True  # the preview decides the switch, the post-switch window the retirement

    def mirrored(self, index: int) -> bool:
        return index == 0

    def baseline(self, state: RolloutState) -> Observation | None:
        if state.step_index == 1 and state.weights.stable > 0:
            return None  # the holdback on stable is a concurrent control: compare with it
        return state.stable_baseline

    def observed(self, state: RolloutState, observation: Observation) -> RolloutState:
        if state.step_index == 0:
            # Relative checks after the switch compare with what stable did during preview.
            return replace(state, stable_baseline=observation)
        return state

    def started(self, weights: Weights) -> str:
        return f"mirroring {weights.mirror_percent}% of traffic to the candidate"

    def advance(self, policy: Policy, state: RolloutState, now: float, window: Observation) -> Decision:
        if state.step_index == 1:
            # The post-switch window passed with no failure: stable may be retired.
            holdback = policy.blue_green.holdback_percent > 0
            return _finish(policy, state, now, Weights.candidate_at(100) if holdback else None)
        if _waiting_for_approval(policy, state):
            return _at_gate(state)
        new = _enter_step(self, policy, state, now, state.earlier_windows)
        watch = format_duration(policy.blue_green.post_switch_window_s)
        held = policy.blue_green.holdback_percent
        kept = f", {held}% kept on stable to compare with" if held else ""
        msg = f"switched {100 - held}% of traffic to {policy.candidate.version}{kept}; watching for {watch}"
        return Decision(new, (SetWeights(new.weights, "switch"), Announce("Switched", msg)))


_ALL_STRATEGIES: tuple[Strategy, ...] = (Canary(), BlueGreen())
# The strategies by the policy's ``strategy`` (its schema enum lists the same names).
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _ALL_STRATEGIES}


def strategy_of(policy: Policy) -> Strategy:
    """The policy's strategy; ValueError naming the known ones otherwise."""
    found = STRATEGIES.get(policy.strategy)
    if found is None:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"no strategy {policy.strategy!r}; known strategies: {known}")
    return found


# ---- what the driver found when carrying out a decision -------------------------------


def retry_rollback(state: RolloutState) -> Decision:
    from mesh_canary.core.fallback import safe_weights  # once on the fallback, it is retried

    return Decision(state, (SetWeights(safe_weights(state), state.reason, rollback=True),))


def rollback_write_failed(state: RolloutState, error: str, retry_at: float, first: bool) -> Decision:
    """The write of 100% stable did not go through: the rollback stays pending (not finished)
    and is retried by ``retry_at``; the first failure is announced at once."""
    new = replace(state, rollback_pending=True, retry_at=retry_at)
    if not first:
        return Decision(new)
    msg = (
        f"the rollback to {_safe_words(state)} could not be written ({error}); traffic may still reach the "
        f"candidate at {state.steps[-1].weight if state.steps else '?'}%; retrying until it goes through"
    )
    return Decision(new, (Announce("RollbackFailing", msg, severity="warning"),))


def rollback_written(state: RolloutState) -> Decision:
    """A pending rollback's write went through at last: the rollout is finished."""
    new = replace(state, rollback_pending=False, retry_at=None)
    return Decision(
        new,
        (Announce("RolledBack", f"rolled back to {_safe_words(state)}: {state.reason}", severity="warning"),),
    )


def _safe_words(state: RolloutState) -> str:
    from mesh_canary.core.fallback import safe_weights, safe_words

    return safe_words(safe_weights(state))


def forward_write_failed(state: RolloutState, now: float, weights: Weights, error: str) -> Decision:
    """A step's write could not be made: the candidate may hold traffic with nothing
    watching it, so roll back to 100% stable."""
    reason = f"could not write {weights.candidate}% to the candidate ({error}); rolled back to 100% stable"
    return _roll_back(state, now, reason, ("writeFailed",))


def towards_stable(live: Weights, expected: Weights) -> bool:
    """Do the live weights send less to the candidate (or mirror less) than ``expected``?"""
    if live.candidate != expected.candidate:
        return live.candidate < expected.candidate
    return live.mirror_percent < expected.mirror_percent


def moved_outside(state: RolloutState, now: float, live: Weights, where: str) -> Decision:
    """Someone moved traffic towards stable: stop, write nothing over their weights."""
    reason = (
        f"{where} moved to {live.stable}/{live.candidate} outside mesh-canary "
        f"(mesh-canary had {state.weights.stable}/{state.weights.candidate}): a person took over; "
        "nothing written"
    )
    new = _ended(state, now, Phase.ABORTED, reason, ("outsideChange",), live)
    return Decision(new, (Announce("Aborted", f"stopped: {reason}", severity="warning"),))


def recorded_rollback(
    state: RolloutState, now: float, reason: str, failed: Sequence[str] = (), weights: Weights = ALL_STABLE
) -> Decision:
    """On resume: the route already holds our own rollback (recorded with its write), which
    the saved state missed (a crash or a second Ctrl-C before the save): adopt it.
    ``weights``: what it wrote (100% stable, or 100% fallback: core/fallback.py)."""
    new = _ended(state, now, Phase.ROLLED_BACK, reason, tuple(failed) or state.failed_checks, weights)
    msg = f"rolled back to {_safe_words(new)} (found on the route when resuming): {reason}"
    return Decision(new, (Announce("RolledBack", msg, severity="warning"),))


def taken_over(state: RolloutState, now: float, reason: str) -> Decision:
    """Another rollout took the route over: stop, write nothing over its weights."""
    new = _ended(state, now, Phase.ABORTED, reason, ("outsideChange",))
    return Decision(new, (Announce("Aborted", f"stopped: {reason}", severity="warning"),))
