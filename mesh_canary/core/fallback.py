"""The fallback destination (``spec.fallback``): where traffic goes when stable itself breaks.

A rollback sends every request to stable. When, in the window whose failed checks roll the
candidate back, stable also breaks the policy's absolute limits (``max``/``min``: its own
error rate above ``errorRate max``, say), that would send everyone to a version that is
failing too: the rollback writes 100% to the fallback (a simpler model, an older version)
instead, first and in one write, announced (``FellBack``) and shown in the status.

Rules (docs/policy.md "fallback"):

- Only a FAIL on stable's own data switches: no data, too few requests or a judge that
  cannot judge stable is never a reason to switch (the rollback to stable stands).
- Once on the fallback, nothing mesh-canary decides moves traffic back (no flapping):
  only a person's order (``rollout restore-stable``) writes 100% stable again.
- The rollout stays RolledBack (the candidate was not promoted); "on the fallback" is the
  state's weights (``weights.fallback == 100``), so a saved state says it and a restart
  resumes it without a new field.
- After a rollback to stable (not a person's abort), with ``fallback.watchAfterRollback``,
  stable keeps being judged against the same limits on the windows since the rollback
  (``watch_until``): proven broken, the same switch. The rollout's outcome is decided
  (RolledBack) but it is not finished until the watch ends, the switch happens or a person
  orders ``restore-stable`` (which then ends the watch: stable stays).

Pure: no I/O, no clock. The engine calls :func:`instead_of_rollback` and :func:`restore_stable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult, Judge, JudgeContext, Verdict
from mesh_canary.core.weights import ALL_STABLE, Weights

if TYPE_CHECKING:  # the engine imports this module inside its functions: no cycle at run time
    from mesh_canary.core.engine import Decision, RolloutState

ALL_FALLBACK = Weights(stable=0, candidate=0, fallback=100)
# The prefix of stable's broken limits among a rollout's failed checks ("stable:errorRate").
STABLE_PREFIX = "stable:"


def on_fallback(state: RolloutState) -> bool:
    """Does the rollout hold traffic on the fallback (until a person restores stable)?"""
    return state.weights.fallback > 0


def safe_weights(state: RolloutState) -> Weights:
    """What a rollback (and its retries) writes: the fallback once switched, else stable."""
    return ALL_FALLBACK if on_fallback(state) else ALL_STABLE


def safe_words(weights: Weights) -> str:
    return "100% fallback" if weights.fallback else "100% stable"


def limit_checks(policy: Policy) -> tuple[Check, ...]:
    """The policy's absolute limits (checks with ``max`` or ``min``), relative bounds dropped:
    what stable itself must keep. A relative bound compares a version with stable, so it
    says nothing about stable."""
    return tuple(
        replace(
            c,
            max_increase=None,
            max_increase_ratio=None,
            max_decrease=None,
            max_psi=None,
            max_deviation=None,
        )
        for c in policy.analysis.checks
        if c.max is not None or c.min is not None
    )


def stable_breaks(policy: Policy, observation: Observation, judge: Judge) -> tuple[CheckResult, ...]:
    """Stable's absolute limits that ``observation`` proves broken, judged by the same judge
    and the same statistics as the candidate's (stable's counts in the candidate's place,
    the policy's confidence as its one test). Empty when none is proven broken, and when
    stable cannot be judged: missing data is never a reason to switch."""
    checks = limit_checks(policy)
    if not checks or observation.problem or observation.stable.requests <= 0:
        return ()
    alone = Observation(observation.since, observation.at, observation.stable, observation.stable)
    ctx = JudgeContext(
        candidate_share=0.5,
        alpha=1.0 - policy.analysis.confidence,
        min_requests=policy.analysis.min_requests,
        burst_duration_s=policy.analysis.burst_duration_s,
    )
    try:
        results = judge.evaluate(checks, alone, ctx)
    except Exception:  # pure code: a judge that cannot judge stable leaves the rollback to stable
        return ()
    return tuple(r for r in results if isinstance(r, CheckResult) and r.verdict is Verdict.FAIL)


def instead_of_rollback(
    policy: Policy, rollback: Decision, observation: Observation, judge: Judge
) -> Decision:
    """The candidate failed and ``rollback`` sends everyone to stable: when the policy has a
    fallback and stable breaks its absolute limits in the same window, send everyone to the
    fallback instead (one write of 100% fallback, first of all), else ``rollback`` as it is."""
    if policy.fallback is None:
        return rollback
    broken = stable_breaks(policy, observation, judge)
    if not broken:
        return rollback
    return _to_fallback(policy, rollback.state, broken, "and")


def then_watch(policy: Policy, before: RolloutState, decision: Decision, now: float) -> Decision:
    """A tick that rolled back to stable starts the watch of ``fallback.watchAfterRollback``
    (none for a person's abort: their move to stable is never overwritten)."""
    from mesh_canary.core.engine import Phase

    new = decision.state
    rolled_now = new.phase is Phase.ROLLED_BACK and before.phase is not Phase.ROLLED_BACK
    if policy.fallback is None or policy.fallback_watch_s <= 0 or not rolled_now or on_fallback(new):
        return decision
    if "manual" in new.failed_checks:
        return decision
    return replace(decision, state=replace(new, watch_until=now + policy.fallback_watch_s))


def watching(
    policy: Policy, state: RolloutState, observation: Observation, now: float, judge: Judge
) -> Decision | None:
    """A tick during the watch after a rollback (None: not watching): stable proven broken
    on the windows since the rollback -> 100% fallback; the watch over -> finished."""
    from mesh_canary.core.engine import Decision

    until = state.watch_until
    if until is None or state.rollback_pending:
        return None
    state = replace(state, last_tick_at=now, ticks=state.ticks + 1)
    broken = stable_breaks(policy, observation, judge)
    if broken:
        return _to_fallback(policy, replace(state, watch_until=None), broken, "after the rollback,")
    if now >= until:
        return Decision(replace(state, watch_until=None))  # stable held: the rollout is finished
    return Decision(state)


def _to_fallback(policy: Policy, state: RolloutState, broken: Sequence[CheckResult], link: str) -> Decision:
    """One write of 100% fallback (first of all), announced, recorded in ``state``."""
    from mesh_canary.core.engine import Announce, Decision, SetWeights

    stable_why = "; ".join(f"{r.name}: {r.reason}" for r in broken)
    reason = (
        f"{state.reason}; {link} stable {policy.stable.version} breaks its limits too "
        f"({stable_why}): traffic sent to the fallback {_where(policy)} until a person restores stable "
        "(`mesh-canary rollout restore-stable`)"
    )
    failed = (*state.failed_checks, *(STABLE_PREFIX + r.name for r in broken))
    new = replace(state, weights=ALL_FALLBACK, reason=reason, failed_checks=failed)
    return Decision(
        new,
        (
            SetWeights(ALL_FALLBACK, reason, rollback=True),
            Announce("FellBack", f"sent 100% of traffic to the fallback: {reason}", severity="warning"),
        ),
    )


def restore_stable(policy: Policy, state: RolloutState) -> Decision:
    """A person's order: traffic from the fallback back to 100% stable (one write, made like a
    rollback's: it checks nothing first and is retried until it goes through). Not on the
    fallback: nothing to do."""
    from mesh_canary.core.engine import Announce, Decision, SetWeights

    if state.watch_until is not None and not on_fallback(state):
        words = "stable kept by a person: the watch after the rollback ended (`rollout restore-stable`)"
        return Decision(replace(state, watch_until=None), (Announce("StableKept", words),))
    if not on_fallback(state):
        return Decision(state)
    words = f"traffic returned from the fallback to 100% stable ({policy.stable.version}) by a person"
    new = replace(state, weights=ALL_STABLE, reason=f"{state.reason}; {words}")
    return Decision(new, (SetWeights(ALL_STABLE, words, rollback=True), Announce("RestoredStable", words)))


def stable_failures(failed_checks: Sequence[str]) -> list[str]:
    """The names of stable's broken limits among a rollout's failed checks."""
    return [f.removeprefix(STABLE_PREFIX) for f in failed_checks if f.startswith(STABLE_PREFIX)]


def _where(policy: Policy) -> str:
    d = policy.fallback
    assert d is not None
    return d.host + (f" subset {d.subset}" if d.subset else "")
