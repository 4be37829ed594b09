"""`rollout promote --full` in the engine: the next analysis judges first, then promotes."""

from __future__ import annotations

from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Phase, RolloutState, SetWeights
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import ALL_STABLE, Weights
from tests.test_engine import ScriptedJudge, make_policy, obs

T0 = 1_000.0


def _started() -> tuple[Policy, RolloutState]:
    policy = make_policy()
    return policy, engine.start(policy, T0).state


def test_promote_full_writes_nothing_then_promotes_at_the_next_analysis() -> None:
    policy, state = _started()
    ordered = engine.command(policy, state, Command.PROMOTE_FULL, T0 + 5)
    assert ordered.weight_writes == [] and ordered.state.promote_full
    assert [a.kind for a in ordered.announcements] == ["PromoteFull"]
    # Before the step's minimum duration, at 10%: skipped to 100% all the same.
    done = engine.tick(policy, ordered.state, obs(T0, T0 + 30), T0 + 30, ScriptedJudge())
    assert done.state.phase is Phase.SUCCEEDED and done.state.weights == Weights.candidate_at(100)
    assert done.weight_writes == [SetWeights(Weights.candidate_at(100), "promote --full")]
    assert "promote --full" in done.state.reason and not done.state.promote_full
    # It survives a restart exactly (the order is in the saved state).
    assert RolloutState.from_dict(ordered.state.to_dict()) == ordered.state


def test_promote_full_never_overrides_a_failing_check() -> None:
    policy, state = _started()
    ordered = engine.command(policy, state, Command.PROMOTE_FULL, T0 + 5).state
    bad = engine.tick(policy, ordered, obs(T0, T0 + 30, errors=5), T0 + 30, ScriptedJudge())
    assert bad.state.phase is Phase.ROLLED_BACK and bad.weight_writes[0].weights == ALL_STABLE


def test_promote_full_waits_for_data_and_never_promotes_on_none() -> None:
    policy, state = _started()
    ordered = engine.command(policy, state, Command.PROMOTE_FULL, T0 + 5).state
    silent = engine.tick(policy, ordered, obs(T0, T0 + 30, requests=0), T0 + 30, ScriptedJudge())
    assert silent.state.phase is Phase.PROGRESSING and silent.weight_writes == []
    assert silent.state.promote_full  # still ordered: the next analysis with data promotes


def test_promote_full_releases_a_pause_and_a_gate_but_not_a_finished_rollout() -> None:
    policy, state = _started()
    paused = engine.command(policy, state, Command.PAUSE, T0 + 1).state
    ordered = engine.command(policy, paused, Command.PROMOTE_FULL, T0 + 2).state
    assert (ordered.phase, ordered.paused) == (Phase.PROGRESSING, False)
    aborted = engine.command(policy, state, Command.ABORT, T0 + 1).state
    assert engine.command(policy, aborted, Command.PROMOTE_FULL, T0 + 2).state == aborted
