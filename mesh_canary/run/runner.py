"""The thin driver that runs one rollout: read metrics, call the engine, carry out its
actions, save the state. Used by `mesh-canary run`, the demo, and (one per rollout) the
controller, and by `simulate` on a virtual clock.

This is the one layer that owns retries and deadlines: routers make one bounded attempt
per call; the runner retries with backoff under a total deadline per turn, so
`tick_once()` always returns in bounded time (the controller calls it from a worker pool).

- Before the first write the runner takes ownership of the route (refusing a second owner).
- Every forward write is a compare-and-swap on the weights the rollout last wrote: if they
  moved towards stable (a person, GitOps), the rollout stops as `Aborted` and writes
  nothing; moved elsewhere, it holds and says so, never fights.
- A forward write the runner gives up on is followed by a rollback to 100% stable.
- A rollback write never waits for a check; it carries its own record (atomically); if it
  fails it is announced at once (`RollbackFailing`), the state says `rollbackPending`, and
  every later turn retries it with backoff until it goes through.
- A resume trusts the live weights over a stale state when they moved towards stable.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Decision, RolloutState
from mesh_canary.core.hooks import DECIDING, HookResult
from mesh_canary.core.model import Destination, Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import Judge
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.errors import EXIT_UNFINISHED, BadInput, CouldNotWork
from mesh_canary.protocols import (
    Announcement,
    Clock,
    HookCaller,
    MetricsSource,
    Notifier,
    StateStore,
    TrafficRouter,
)
from mesh_canary.redact import redact
from mesh_canary.routing.base import (
    GuardedRouter,
    RollbackRecord,
    RouteNotFound,
    RouteOwned,
    WeightsMoved,
    guarded,
)
from mesh_canary.run.hooks import InFlight, SkippedHooks

log = logging.getLogger("mesh_canary.runner")  # the name users filter on; kept across the move


def default_judge() -> Judge:
    from mesh_canary.core.judge import AnytimeJudge

    return AnytimeJudge()


class RouterWriteError(CouldNotWork, RuntimeError):
    """The route could not be reached or claimed before anything was written."""


@dataclass(frozen=True)
class RunResult:
    outcome: str  # promoted | rolled_back | aborted | timed_out | paused
    state: RolloutState

    @property
    def exit_code(self) -> int:
        try:
            return engine.Outcome(self.outcome).exit_code
        except ValueError:
            return EXIT_UNFINISHED


def outcome_of(state: RolloutState) -> str | None:
    """The outcome of a finished rollout (the engine's one phase -> outcome mapping)."""
    outcome = engine.outcome_of(state)
    return None if outcome is None else outcome.value


UpdateHook = Callable[[RolloutState, Observation | None], None]


def _retryable(e: Exception) -> bool:
    """Worth another attempt? Not when another run owns the route, nor for a configuration
    error (a VirtualService without the routes the policy names): retrying changes nothing."""
    return not isinstance(e, (RouteOwned, WeightsMoved, RouteNotFound, ValueError))


class RolloutRunner:
    def __init__(
        self,
        policy: Policy,
        router: TrafficRouter,
        metrics: MetricsSource,
        store: StateStore | None,  # None: kept in memory only (simulation: never resumed)
        notifier: Notifier,
        clock: Clock,
        judge: Judge | None = None,
        on_update: UpdateHook | None = None,
        *,
        write_deadline_s: float = 5.0,
        rollback_turn_s: float = 10.0,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        hooks: HookCaller | None = None,  # None: hooks are not called (simulate)
    ) -> None:
        self.policy = policy
        self.router = router
        self.route = guarded(router)
        self.metrics = metrics
        self.store = store
        self.notifier = notifier
        self.clock = clock
        self.judge: Judge = judge or default_judge()
        self.on_update = on_update
        # Total time a turn may spend on one forward write (all attempts), and on the
        # rollback write before it saves the rollback as pending and returns.
        self.write_deadline_s = write_deadline_s
        self.rollback_turn_s = rollback_turn_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.state: RolloutState | None = None
        self.outside = OutsideChanges(self.route, notifier, policy.name)
        self._pending: list[Command] = []
        self._rollback_delay = backoff_s
        self._tries = Tries(clock, backoff_s, max_backoff_s)
        self.ownership = RouteOwnership(
            self.route, f"{policy.namespace}/{policy.name}", self._tries, lambda: self.write_deadline_s
        )
        # A second Ctrl-C never cuts a write (or the save after it) in half: it asks to quit,
        # and the runner quits right after.
        self.in_write = False
        self.quit_requested = False
        # Step hooks run in the background; their answers come back at the next turn.
        self.hooks = InFlight(hooks or SkippedHooks())
        self._ended_hooks = False

    # -- life cycle ------------------------------------------------------------------

    def start_or_resume(self) -> RolloutState:
        """Resume the saved rollout of this policy, or start a new one.

        Resuming never re-writes weights: a rollback that went through before a crash
        must not be undone by replaying an older step; and when the live weights moved
        towards stable since the state was saved, the live weights win.
        """
        saved = self.store.load() if self.store is not None else None
        previous = ""
        if saved is not None:
            state = RolloutState.from_dict(saved)
            previous = state.run_id
            if state.policy_fingerprint == engine.policy_fingerprint(self.policy):
                log.info("resuming %s at step %d (%s)", state.name, state.step_index + 1, state.phase.value)
                self.state = state
                self.ownership.owned = state.run_id
                if state.terminal:
                    self.ownership.release()  # in case the last run ended before it could
                    return state
                if state.rollback_pending:
                    return state  # decided: only the write of 100% stable is left, no check first
                run_id = state.run_id or _new_run_id()
                self.ownership.claim(run_id, previous)
                if run_id != state.run_id:
                    state = self._commit(replace(state, run_id=run_id), [])
                if engine.waiting_to_start(state):
                    # Nothing written yet: ask the preRollout hooks (again), trust no weights.
                    return self._apply(Decision(state, (engine.RunHooks(state.awaiting_hook),)))
                return self._trust_live_weights(state)
            log.info("policy changed since the saved rollout; starting over")
        return self._start(previous)

    def restart(self) -> RolloutState:
        """A person's retry (`rollout retry`) of a rollout that ended RolledBack or Aborted:
        a new rollout of the same policy from step 0, whose first write is made here."""
        state = self._require_state()
        if state.phase not in (engine.Phase.ROLLED_BACK, engine.Phase.ABORTED) or not state.terminal:
            raise ValueError(
                f"{state.name} is {state.phase.value}: only a RolledBack or Aborted rollout restarts"
            )
        self.state = None  # a new rollout: its first write compares with nothing saved
        self._pending.clear()
        return self._start(state.run_id)

    def _start(self, previous: str) -> RolloutState:
        check_stable_is_live(self.policy, self.outside.live("check that stable is live"))
        run_id = _new_run_id()
        self.ownership.claim(run_id, previous)  # before the first write
        decision = engine.start(self.policy, self.clock.now())
        return self._apply(replace(decision, state=replace(decision.state, run_id=run_id)))

    def restore_stable(self) -> RolloutState:
        """A person's order (`rollout restore-stable`): traffic from the fallback back to 100%
        stable, written now (the rollout has finished, so no turn would carry it out)."""
        state = self._require_state()
        return self._apply(engine.command(self.policy, state, Command.RESTORE_STABLE, self.clock.now()))

    def request(self, cmd: Command | str) -> None:
        """Queue a person's order (abort, pause, resume, approve) for the next turn."""
        self._pending.append(Command(cmd))

    def request_quit(self) -> bool:
        """The second Ctrl-C: True when the runner will quit by itself right after the write
        in progress, or after the rollback the first Ctrl-C asked for (bounded by the
        rollback's turn deadline): quitting before it would leave traffic on the candidate
        and a state that a rerun would carry forward."""
        self.quit_requested = True
        wake = getattr(self.clock, "wake", None)
        if callable(wake):
            wake()
        return self.in_write or Command.ABORT in self._pending

    def tick_once(self, at: float | None = None) -> RolloutState:
        """One analysis (orders first). ``at``: the analysis instant when not now (the controller's
        grid instant, at most one interval past; writes still happen now)."""
        state = self._require_state()
        now = self.clock.now() if at is None else at
        if state.rollback_pending:
            # Decided already: no metrics read may delay the retry of 100% stable.
            self._pending.clear()
            return self._apply(
                engine.tick(self.policy, state, Observation(since=now, at=now), now, self.judge)
            )
        while self._pending and not state.terminal:
            # Dequeued only once carried out: an abort whose write failed is tried again.
            state = self._apply(engine.command(self.policy, state, self._pending[0], now))
            self._pending.pop(0)
        # After people's orders: an abort comes before any hook's yes moves traffic.
        state = self._hook_answers(state)
        if state.terminal or state.rollback_pending:
            return state
        if engine.waiting_to_start(state):
            return self._apply(
                engine.tick(self.policy, state, Observation(since=now, at=now), now, self.judge)
            )
        observation = self._read(state, now)
        decision = engine.tick(self.policy, state, observation, now, self.judge)
        state = self._apply(decision)
        if not decision.weight_writes and not state.terminal and not state.rollback_pending:
            # After the decision, not before: reading the live weights (an API call) must
            # never delay a rollback.
            state = self._watch_for_external_change(state)
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
            # A pending rollback is never given up for a timeout: traffic is not safe yet.
            if deadline is not None and wake_at > deadline and not state.rollback_pending:
                self.clock.sleep(max(deadline - self.clock.now(), 0.0))
                # Decided already (rolled back, stable still watched for a fallback): say so.
                decided = engine.outcome_of(state)
                undecided = engine.Outcome.PAUSED if state.paused else engine.Outcome.TIMED_OUT
                return RunResult((decided or undecided).value, state)
            self.clock.sleep(max(wake_at - self.clock.now(), 0.0))
            if not self._pending:
                self._quit_if_asked()
            if not self._pending and self.clock.now() < wake_at:
                state = self._hook_answers(state)  # woken by a hook's answer: act on it alone
                continue
            state = self.tick_once()
        outcome = outcome_of(state)
        assert outcome is not None
        self.finish_hooks()
        return RunResult(outcome, state)

    # -- carrying out a decision -----------------------------------------------------

    def _apply(self, decision: Decision) -> RolloutState:
        # The writes and the save after them are one unit for a second Ctrl-C: it takes
        # effect right after (bounded by the write deadlines), never in between.
        outer = self.in_write
        self.in_write = True
        try:
            state, as_decided = self._carry_out(decision)
        finally:
            self.in_write = outer
        if not outer:
            self._quit_if_asked()
        self._start_hooks(decision if as_decided else Decision(state), state)
        return state

    # -- step hooks --------------------------------------------------------------------

    def _start_hooks(self, decision: Decision, state: RolloutState) -> None:
        """After the writes and the save: the hooks the decision asks for (not when a write
        replaced it), and the ending's hooks once the rollout finished. In the background."""
        asked = [a for a in decision.actions if isinstance(a, engine.RunHooks)]
        if state.terminal and not self._ended_hooks:
            self._ended_hooks = True
            asked += engine.after_hooks(self.policy, state)
        for action in asked:
            if self.policy.hooks.calls(action.phase):
                deciding = action.phase in DECIDING
                self.hooks.start(
                    action.phase, hook_fields(self.policy, state, action.phase), deciding, self.clock.now()
                )
        if any(a.phase in DECIDING for a in asked):
            wake = getattr(self.clock, "wake", None)
            if callable(wake):
                self._wake_when_answered(wake)

    def _wake_when_answered(self, wake: Callable[[], None]) -> None:
        """A deciding answer is acted on at once, not an analysis interval later."""

        def watch() -> None:
            while self.hooks.busy():
                self.hooks.wait(1.0)
            wake()

        threading.Thread(target=watch, name="hook-wake", daemon=True).start()

    def _hook_answers(self, state: RolloutState) -> RolloutState:
        """The answers that came back since the last turn, as data for the engine."""
        for result in self.hooks.answers():
            report_hook(self.policy.name, result)
            if result.phase in DECIDING:
                state = self._apply(engine.hook_answered(self.policy, state, result, self.clock.now()))
            else:  # reported, never judged: into the audit record
                state = self._commit(state.audited(engine.hook_entry(result, self.clock.now())), [])
        return state

    def finish_hooks(self, timeout_s: float = 60.0) -> None:
        """Wait for the hooks still running (each bounded by its own deadline) and report them."""
        self.hooks.wait(timeout_s)
        if self.state is not None:
            self._hook_answers(self.state)  # reported and recorded (a late deciding one is ignored)

    def _carry_out(self, decision: Decision) -> tuple[RolloutState, bool]:
        """The state saved, and whether the decision was carried out as decided (not
        replaced after a failed write)."""
        # Weight writes first, in order (a rollback's is always first of all); then the
        # state is saved; announcements last and in the background.
        state = decision.state
        announcements = [_announcement(self.policy, a, state) for a in decision.announcements]
        for write in decision.weight_writes:
            if write.rollback:
                taken = self._person_took_over(write)
                if taken is not None:
                    return self._apply(taken), False
                error = self._write_rollback(write, state)
                if error is not None:
                    retry_at = self.clock.now() + self._rollback_delay
                    failed = engine.rollback_write_failed(state, error, retry_at, first=False)
                    # What the decision announced (RolledBack) waits for the write.
                    return self._commit(failed.state, []), False
                if state.rollback_pending:
                    done = engine.rollback_written(state)
                    state = done.state
                    announcements = [_announcement(self.policy, a, state) for a in done.announcements]
            else:
                instead = self._write_weights(write, decision)
                if instead is not None:
                    return self._apply(instead), False
        written = [self._write_entry(w, state) for w in decision.weight_writes]
        return self._commit(state.audited(*written), announcements), True

    def _write_entry(self, write: engine.SetWeights, state: RolloutState) -> dict[str, Any]:
        """A weight write that went through, in the audit record: what, who and why."""
        return {
            "at": self.clock.now(),
            "kind": "write",
            "weights": write.weights.to_dict(),
            "rollback": write.rollback,
            "who": f"mesh-canary (run {state.run_id or '-'})",
            "why": redact(write.reason),
        }

    def _commit(self, state: RolloutState, announcements: list[Announcement]) -> RolloutState:
        finished = state.terminal and not (self.state is not None and self.state.terminal)
        if announcements:
            now = self.clock.now()
            state = state.audited(
                *(
                    {"at": now, "kind": "notification", "event": a.kind, "sent": "queued"}
                    for a in announcements
                )
            )
        # Memory first: if the save fails, the next turn still knows what was written (and
        # the controller's status write after the turn carries it).
        self.state = state
        if self.store is not None:
            self.store.save(state.to_dict())
        for a in announcements:
            self.notifier.notify(a)
        if finished:
            self.ownership.release()
        return state

    def _write_weights(self, write: engine.SetWeights, decision: Decision) -> Decision | None:
        """A forward write, compare-and-swap, retried with backoff within ``write_deadline_s``.

        None when it went through; otherwise the decision that replaces ``decision``: the
        rollout stops (moved towards stable, or another owner), holds (moved elsewhere), or
        rolls back (the write could not be made).
        """
        before = self.state
        # Nothing written yet (waiting for preRollout hooks): the first write compares with nothing.
        first = before is None or engine.waiting_to_start(before)
        expected = before.weights if before is not None and not first else None
        run_id = decision.state.run_id
        error = ""
        for attempt in self._tries(self.write_deadline_s):
            try:
                self.route.write(write.weights, owner=run_id, expected=expected)
                return None
            except WeightsMoved as e:
                assert before is not None and expected is not None  # only a later write compares
                if engine.towards_stable(e.live, expected):
                    return self.outside.towards_stable(before, self.clock.now(), e.live)
                self.outside.announce(e.live, expected)
                return Decision(_held(before, decision.state))
            except RouteOwned as e:
                return engine.taken_over(before or decision.state, self.clock.now(), str(e))
            except Exception as e:
                error = redact(str(e))
                log.warning("weight write %s failed (attempt %d): %s", write.weights, attempt, error)
                if first and not _retryable(e):
                    # The first write, refused for the configuration (no such route): nothing
                    # was written and nothing is saved; the rollout does not start.
                    raise RouterWriteError(f"could not start the rollout: {error}") from e
                if not _retryable(e) or self.quit_requested:
                    break
        return engine.forward_write_failed(before or decision.state, self.clock.now(), write.weights, error)

    def _person_took_over(self, write: engine.SetWeights) -> Decision | None:
        """Before the first write of 100% fallback: a person's move towards stable since our
        last write is never overwritten (a rollback to stable needs no such look: it agrees
        with them). One bounded read; an unreadable route does not stop the write."""
        before = self.state
        if before is None or not write.weights.fallback or before.weights.fallback:
            return None
        live = self.outside.live("check for a person's move before the fallback")
        if (
            live is None
            or _same_split(live, before.weights)
            or not engine.towards_stable(live, before.weights)
        ):
            return None
        return self.outside.towards_stable(before, self.clock.now(), live)

    def _write_rollback(self, write: engine.SetWeights, state: RolloutState) -> str | None:
        """Write 100% stable with its record; retried with backoff for at most
        ``rollback_turn_s``. None when it went through, else the last error."""
        record = RollbackRecord(state.run_id, state.reason, state.failed_checks, self.clock.now())
        deadline = self.clock.now() + self.rollback_turn_s
        announced = state.rollback_pending  # announced when it first failed
        while True:
            try:
                self.route.write(write.weights, owner=state.run_id, rollback=record)
                self._rollback_delay = self.backoff_s
                return None
            except Exception as e:
                error = redact(str(e))
                log.warning("ROLLBACK write of 100%% stable failed: %s", error)
                if not announced:  # at once, not after the retries
                    announced = True
                    first = engine.rollback_write_failed(state, error, self.clock.now(), first=True)
                    for a in first.announcements:
                        self.notifier.notify(_announcement(self.policy, a, first.state))
                delay = self._rollback_delay
                self._rollback_delay = min(self._rollback_delay * 2, self.max_backoff_s)
                if self.quit_requested or self.clock.now() + delay > deadline:
                    return error
                self.clock.sleep(delay)

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

    def _watch_for_external_change(self, state: RolloutState) -> RolloutState:
        """Someone else (Argo CD, Flux, a person) changed the weights: towards stable, the
        rollout stops and writes nothing; elsewhere, say so and don't fight."""
        live = self.outside.live("check the weights")
        if live is None:
            return state
        if _same_split(live, state.weights):
            self.outside.message = None
            return state
        if engine.towards_stable(live, state.weights):
            return self._apply(self.outside.towards_stable(state, self.clock.now(), live))
        self.outside.announce(live, state.weights)
        return state

    def _trust_live_weights(self, state: RolloutState) -> RolloutState:
        """On resume: a state file can be older than the route (a crash, or a second Ctrl-C,
        between a write and the save). Towards stable, the live weights win."""
        live = self.outside.live("check the saved state")  # unread: every forward write still compares
        if live is None or _same_split(live, state.weights) or not engine.towards_stable(live, state.weights):
            return state
        return self._apply(self.outside.towards_stable(state, self.clock.now(), live))

    @property
    def external_change(self) -> str | None:
        """The outside change last announced (None while the weights are ours)."""
        return self.outside.message

    # -- helpers -----------------------------------------------------------------------

    def _quit_if_asked(self) -> None:
        if self.quit_requested:
            raise KeyboardInterrupt

    def _require_state(self) -> RolloutState:
        if self.state is None:
            return self.start_or_resume()
        return self.state


class StableNotLive(BadInput, ValueError):
    """The route sends every request to what the policy calls the candidate: its stable is no
    longer the live version (a rollout promoted it). Starting would move traffic back."""


def check_stable_is_live(policy: Policy, live: Weights | None) -> None:
    """Refuse to start a rollout whose stable is not live: after a promotion the route sends
    100% to the old candidate, and a start would write 80/20 towards the old stable model.
    Unknown live weights (unreadable route) do not refuse: every forward write still compares."""
    if live is None or live.candidate < 100 or live.stable > 0:
        return
    raise StableNotLive(
        f"{policy.namespace + '/' if policy.namespace else ''}{policy.name}: the route sends 100% of traffic "
        f"to {_where(policy.candidate.destination)}, which this policy calls the candidate "
        f"({policy.candidate.version}): its stable {policy.stable.version} is no longer the live version, "
        "and starting would move traffic back to it; for the next release swap them "
        "(`mesh-canary rollout next -f POLICY --candidate NEW`); nothing was changed"
    )


def _where(d: Destination) -> str:
    return d.host + (f" subset {d.subset}" if d.subset else "")


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _announcement(policy: Policy, a: engine.Announce, state: RolloutState) -> Announcement:
    return Announcement(
        rollout=policy.name,
        kind=a.kind,
        message=a.message,
        severity=a.severity,
        details={"phase": state.phase.value, "weights": state.weights.to_dict()},
    )


def hook_fields(policy: Policy, state: RolloutState, phase: str) -> dict[str, Any]:
    """What a hook's body template may use (core.hooks.TEMPLATE_FIELDS)."""
    return {
        "name": policy.name,
        "namespace": policy.namespace,
        "hook": phase,
        "phase": state.phase.value,
        "step": state.step_index + 1,
        "weight": state.weights.candidate,
        "stable": policy.stable.version,
        "candidate": policy.candidate.version,
        "reason": redact(state.reason),
    }


def report_hook(rollout: str, result: HookResult) -> None:
    """A hook's answer in the log (the calls' records carry no URL path nor secret)."""
    if result.ok:
        log.info("%s hooks answered yes", result.phase, extra={"rollout": rollout})
    else:
        log.warning("%s hooks failed: %s", result.phase, redact(result.reason), extra={"rollout": rollout})


def _held(before: RolloutState, judged: RolloutState) -> RolloutState:
    """Keep the step (no write happened) but remember the turn's analysis."""
    return replace(
        before,
        last_tick_at=judged.last_tick_at,
        ticks=judged.ticks,
        checks=judged.checks,
        last_data_at=judged.last_data_at,
    )


def _same_split(a: Weights, b: Weights) -> bool:
    return (a.stable, a.candidate, a.fallback, a.mirror_percent) == (
        b.stable,
        b.candidate,
        b.fallback,
        b.mirror_percent,
    )


__all__ = [
    "ALL_STABLE",
    "RolloutRunner",
    "RouterWriteError",
    "RunResult",
    "StableNotLive",
    "check_stable_is_live",
    "outcome_of",
]


class Tries:
    """The runner's one retry rhythm: an attempt at once, then more after doubling pauses
    (capped at ``max_s``) for as long as a total deadline allows. Yields attempt numbers."""

    def __init__(self, clock: Clock, first_s: float, max_s: float) -> None:
        self.clock, self.first_s, self.max_s = clock, first_s, max_s

    def __call__(self, total_s: float) -> Iterator[int]:
        deadline = self.clock.now() + total_s
        delay, attempt = self.first_s, 1
        yield attempt
        while self.clock.now() + delay <= deadline:
            self.clock.sleep(delay)
            delay, attempt = min(delay * 2, self.max_s), attempt + 1
            yield attempt


class RouteOwnership:
    """Who holds the route: claimed before the first write (a second owner is refused),
    released when the rollout ends. Bounded retries of transient failures."""

    def __init__(self, route: GuardedRouter, rollout: str, tries: Tries, deadline_s: Callable[[], float]):
        self.route, self.rollout, self.tries, self.deadline_s = route, rollout, tries, deadline_s
        self.owned = ""  # the run id whose ownership of the route we hold

    def claim(self, run_id: str, previous: str) -> None:
        last: Exception | None = None
        for _ in self.tries(self.deadline_s()):
            try:
                self.route.claim(run_id, self.rollout, previous)
                self.owned = run_id
                return
            except Exception as e:
                if not _retryable(e):
                    raise
                last = e
        raise RouterWriteError(redact(str(last))) from last

    def release(self) -> None:
        """Best effort: a route left owned is named in the next owner's refusal."""
        if not self.owned:
            return
        error = ""
        for _ in self.tries(self.deadline_s()):
            try:
                self.route.release(self.owned)
                self.owned = ""
                return
            except Exception as e:
                error = redact(str(e))
                if not _retryable(e):
                    break
        log.warning("could not release %s: %s", self.route.ref, error)


class OutsideChanges:
    """Weights someone else set. Towards stable: the rollout stops (a person took over), or
    adopts its own rollback when the route's record is newer than the saved state.
    Elsewhere: announced once, not fought."""

    def __init__(self, route: GuardedRouter, notifier: Notifier, rollout: str) -> None:
        self.route, self.notifier, self.rollout = route, notifier, rollout
        self.message: str | None = None  # the outside change last announced

    def live(self, why: str) -> Weights | None:
        try:
            return self.route.get_weights()
        except Exception as e:
            log.warning("could not read the live weights to %s: %s", why, redact(str(e)))
            return None

    def towards_stable(self, state: RolloutState, now: float, live: Weights) -> Decision:
        """Our own rollback, newer than ``state`` (its record is on the route), or a person's move."""
        try:
            record = self.route.recorded_rollback()
        except Exception:
            record = None
        if record is not None and record.run_id and record.run_id == state.run_id and live.candidate == 0:
            log.info("the route holds this rollout's own rollback, newer than the saved state")
            # Our own rollback; 100% fallback when stable broke too (core/fallback.py).
            safe = live if live.fallback == 100 else ALL_STABLE
            return engine.recorded_rollback(state, now, record.reason, record.failed_checks, safe)
        return engine.moved_outside(state, now, live, self.route.ref)

    def announce(self, live: Weights, expected: Weights) -> None:
        message = (
            f"weights were changed outside mesh-canary: live {live.stable}/{live.candidate}, "
            f"expected {expected.stable}/{expected.candidate}; holding (not fighting it)"
        )
        if message != self.message:
            self.message = message
            self.notifier.notify(Announcement(self.rollout, "ExternalChange", message, severity="warning"))
