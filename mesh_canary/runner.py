"""The thin driver that runs one rollout: read metrics, call the engine, carry out its
actions, save the state. Used by `mesh-canary run`, the demo, and (one per rollout) the
controller; `simulate` drives the engine the same way in virtual time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from mesh_canary.adapters.protocols import (
    Announcement,
    Clock,
    MetricsSource,
    Notifier,
    StateStore,
    TrafficRouter,
)
from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Decision, Phase, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import Judge
from mesh_canary.core.weights import Weights

log = logging.getLogger("mesh_canary.runner")

# Exit codes of CLI.md.
EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_ROLLED_BACK, EXIT_UNFINISHED = 0, 1, 2, 3, 4


def default_judge() -> Judge:
    from mesh_canary.core.judge import AnytimeJudge

    return AnytimeJudge()


class RouterWriteError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunResult:
    outcome: str  # promoted | rolled_back | timed_out | paused
    state: RolloutState

    @property
    def exit_code(self) -> int:
        return {"promoted": EXIT_OK, "rolled_back": EXIT_ROLLED_BACK}.get(self.outcome, EXIT_UNFINISHED)


def outcome_of(state: RolloutState) -> str | None:
    if state.phase is Phase.SUCCEEDED:
        return "promoted"
    if state.phase is Phase.ROLLED_BACK:
        return "rolled_back"
    return None


UpdateHook = Callable[[RolloutState, Observation | None], None]


class RolloutRunner:
    def __init__(
        self,
        policy: Policy,
        router: TrafficRouter,
        metrics: MetricsSource,
        store: StateStore,
        notifier: Notifier,
        clock: Clock,
        judge: Judge | None = None,
        on_update: UpdateHook | None = None,
        rollback_attempts: int = 30,
    ) -> None:
        self.policy = policy
        self.router = router
        self.metrics = metrics
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.judge: Judge = judge or default_judge()
        self.on_update = on_update
        self.rollback_attempts = rollback_attempts
        self.state: RolloutState | None = None
        self.external_change: str | None = None
        self._pending: list[Command] = []

    # -- life cycle ------------------------------------------------------------------

    def start_or_resume(self) -> RolloutState:
        """Resume the saved rollout of this policy, or start a new one.

        Resuming never re-writes weights: a rollback that went through before a crash
        must not be undone by replaying an older step.
        """
        saved = self.store.load()
        if saved is not None:
            state = RolloutState.from_dict(saved)
            if state.policy_fingerprint == engine.policy_fingerprint(self.policy):
                log.info("resuming %s at step %d (%s)", state.name, state.step_index + 1, state.phase.value)
                self.state = state
                return state
            log.info("policy changed since the saved rollout; starting over")
        return self._apply(engine.start(self.policy, self.clock.now()))

    def request(self, cmd: Command | str) -> None:
        """Queue a person's order (abort, pause, resume, approve) for the next turn."""
        self._pending.append(Command(cmd))

    def tick_once(self) -> RolloutState:
        state = self._require_state()
        now = self.clock.now()
        while self._pending and not state.terminal:
            # Dequeued only once carried out: an abort whose write failed is tried again.
            state = self._apply(engine.command(self.policy, state, self._pending[0], now))
            self._pending.pop(0)
        if state.terminal:
            return state
        observation = self._read(state, now)
        decision = engine.tick(self.policy, state, observation, now, self.judge)
        state = self._apply(decision)
        if not decision.weight_writes and not state.terminal:
            # After the decision, not before: reading the live weights (an API call) must
            # never delay a rollback.
            self._watch_for_external_change(state)
        if self.on_update is not None:
            self.on_update(state, observation)
        return state

    def run(self, timeout_s: float | None = None) -> RunResult:
        state = self.state or self.start_or_resume()
        if self.on_update is not None:
            self.on_update(state, None)
        deadline = None if timeout_s is None else self.clock.now() + timeout_s
        while not state.terminal:
            if self._pending:
                state = self.tick_once()
                continue
            wake_at = state.next_tick_at(self.policy)
            if deadline is not None and wake_at > deadline:
                self.clock.sleep(max(deadline - self.clock.now(), 0.0))
                return RunResult("paused" if state.paused else "timed_out", state)
            self.clock.sleep(max(wake_at - self.clock.now(), 0.0))
            state = self.tick_once()
        outcome = outcome_of(state)
        assert outcome is not None
        return RunResult(outcome, state)

    # -- carrying out a decision -----------------------------------------------------

    def _apply(self, decision: Decision) -> RolloutState:
        # Weight writes first, in order (a rollback's is always first of all); then the
        # state is saved; announcements last and in the background.
        for write in decision.weight_writes:
            self._write_weights(write)
        self.store.save(decision.state.to_dict())
        self.state = decision.state
        for a in decision.announcements:
            self.notifier.notify(
                Announcement(
                    rollout=self.policy.name,
                    kind=a.kind,
                    message=a.message,
                    severity=a.severity,
                    details={
                        "phase": decision.state.phase.value,
                        "weights": decision.state.weights.to_dict(),
                    },
                )
            )
        return decision.state

    def _write_weights(self, write: engine.SetWeights) -> None:
        attempts = self.rollback_attempts if write.rollback else 3
        delay = 0.1
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                self.router.set_weights(write.weights)
                return
            except Exception as e:  # every failure is retried the same way
                last = e
                log.warning("weight write %s failed (attempt %d/%d): %s", write.weights, attempt, attempts, e)
                self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
        what = "ROLLBACK to 100% stable" if write.rollback else f"weight change to {write.weights.candidate}%"
        raise RouterWriteError(f"{what} failed after {attempts} attempts: {last}") from last

    def _read(self, state: RolloutState, now: float) -> Observation:
        # Sources bound their own reads in total (Prometheus: min(metrics.timeout, interval);
        # local: its timeout), so this returns in bounded time and the engine's deadlines
        # (noDataTimeout, maxStepDuration) are checked at every tick even while a server stalls.
        # (Imports here: this method's body is all the metrics side changes in this module.)
        from dataclasses import replace

        from mesh_canary.redact import redact

        try:
            observation = self.metrics.read(state.window_start, now)
        except Exception as e:  # a source must not raise, but if one does it is no data
            # Only the kind of error: its text may hold what a server sent, or a credential.
            log.warning("metrics read failed: %s", type(e).__name__)
            return Observation(
                since=state.window_start, at=now, problem=f"metrics read failed: {type(e).__name__}"
            )
        if observation.problem:
            # The problem reaches the state file, the status, Events and notifications.
            observation = replace(observation, problem=redact(observation.problem))
        return observation

    def _watch_for_external_change(self, state: RolloutState) -> None:
        """Someone else (Argo CD, Flux, a person) changed the weights: say so, don't fight."""
        try:
            live = self.router.get_weights()
        except Exception as e:
            log.warning("could not read the live weights: %s", e)
            return
        if _same_split(live, state.weights):
            self.external_change = None
            return
        message = (
            f"weights were changed outside mesh-canary: live {live.stable}/{live.candidate}, "
            f"expected {state.weights.stable}/{state.weights.candidate}"
        )
        if message != self.external_change:
            self.external_change = message
            self.notifier.notify(
                Announcement(self.policy.name, "ExternalChange", message, severity="warning")
            )

    def _require_state(self) -> RolloutState:
        if self.state is None:
            return self.start_or_resume()
        return self.state


def _same_split(a: Weights, b: Weights) -> bool:
    return (a.stable, a.candidate, a.fallback, a.mirror_percent) == (
        b.stable,
        b.candidate,
        b.fallback,
        b.mirror_percent,
    )
