"""The engine state machine, with a scripted fake judge and a virtual clock."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import pytest

from mesh_canary.core import engine
from mesh_canary.core.engine import Announce, Command, Phase, RolloutState, SetWeights
from mesh_canary.core.model import (
    AnalysisSpec,
    BlueGreenSpec,
    CanarySpec,
    Check,
    Policy,
)
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict
from mesh_canary.core.weights import ALL_STABLE, Weights
from tests.conftest import make_policy as shared_policy

CHECKS = (
    Check(metric="errorRate", name="errorRate", max_increase=0.01),
    Check(metric="accuracy", name="accuracy", max_decrease=0.02, min_labeled=100),
)


def make_policy(**kw: object) -> Policy:
    """The shared Policy with this module's versions, steps and analysis; ``kw`` replaces fields."""
    fields: dict[str, object] = {
        "canary": CanarySpec(steps=(10, 50, 100), min_step_duration_s=60, max_step_duration_s=300),
        "analysis": AnalysisSpec(
            interval_s=30, confidence=0.99, min_requests=10, no_data_timeout_s=120, checks=CHECKS
        ),
    }
    return shared_policy(versions=("1.0", "2.0"), **{**fields, **kw})


class ScriptedJudge:
    """Verdict per check from the candidate's counts: errors > 0 fails errorRate, and
    `lean` / `labels_missing` switch on leaning and missing labels."""

    def __init__(self, lean: bool = False, labels_missing: bool = False) -> None:
        self.lean = lean
        self.labels_missing = labels_missing
        self.contexts: list[JudgeContext] = []

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        self.contexts.append(ctx)
        out = []
        for c in checks:
            if c.metric == "errorRate" and window.candidate.errors > 0:
                out.append(CheckResult(c.name, c.metric, Verdict.FAIL, "errors", enough_data=True))
            elif c.metric == "accuracy" and self.labels_missing:
                out.append(CheckResult(c.name, c.metric, Verdict.INCONCLUSIVE, "few labels"))
            else:
                out.append(
                    CheckResult(
                        c.name, c.metric, Verdict.INCONCLUSIVE, "ok", enough_data=True, leaning_fail=self.lean
                    )
                )
        return out


def obs(
    since: float, at: float, requests: float = 100, errors: float = 0, problem: str | None = None
) -> Observation:
    return Observation(
        since=since,
        at=at,
        stable=VersionCounts(requests=requests),
        candidate=VersionCounts(requests=requests, errors=errors),
        problem=problem,
    )


def run_ticks(
    policy: Policy, state: RolloutState, judge: ScriptedJudge, until: float, **obs_kw: object
) -> tuple[RolloutState, list[engine.Action]]:
    actions: list[engine.Action] = []
    t = state.last_tick_at or state.started_at
    while not state.terminal and t < until:
        t += policy.analysis.interval_s
        d = engine.tick(policy, state, obs(state.window_start, t, **obs_kw), t, judge)  # type: ignore[arg-type]
        state = d.state
        actions.extend(d.actions)
    return state, actions


def test_start_writes_first_step_weight() -> None:
    d = engine.start(make_policy(), now=1000.0)
    assert d.state.phase is Phase.PROGRESSING
    assert d.actions[0] == SetWeights(Weights(90, 10), "start")
    assert d.state.steps[0].weight == 10
    assert isinstance(d.actions[1], Announce)


def test_healthy_candidate_advances_every_step_then_promotes() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    state, actions = run_ticks(p, state, ScriptedJudge(), until=10_000)
    writes = [a.weights.candidate for a in actions if isinstance(a, SetWeights)]
    assert writes == [50, 100]
    assert state.phase is Phase.SUCCEEDED
    assert [s.weight for s in state.steps] == [10, 50, 100]
    # The scripted verdicts are inconclusive (ready, not proven): the steps advanced, unproven.
    assert all(s.verdict == "advanced" for s in state.steps)
    assert state.reason.startswith("no check found a regression; not proven: ")
    # Each step held at least minStepDuration.
    assert state.steps[0].end_s == 60.0 and state.steps[1].end_s == 120.0


def test_min_step_duration_holds_the_weight() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    d = engine.tick(p, state, obs(0, 30), 30.0, ScriptedJudge())
    assert d.actions == () and d.state.step_index == 0


def test_failed_check_rolls_back_with_the_stable_write_first() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    d = engine.tick(p, state, obs(0, 30, errors=5), 30.0, ScriptedJudge())
    assert d.state.phase is Phase.ROLLED_BACK
    first = d.actions[0]
    assert isinstance(first, SetWeights) and first.weights == ALL_STABLE and first.rollback
    assert d.state.weights == ALL_STABLE
    assert d.state.failed_checks == ("errorRate",)
    assert "errorRate" in d.state.reason
    assert d.state.steps[-1].verdict == "fail"


def test_leaning_check_holds_until_max_step_duration_then_fails_closed() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    state, _ = run_ticks(p, state, ScriptedJudge(lean=True), until=10_000)
    assert state.phase is Phase.ROLLED_BACK
    assert state.failed_checks == ("stepTimeout",)
    assert state.finished_at == 300.0
    assert "maxStepDuration" in state.reason


def test_missing_labels_do_not_hold_early_steps_but_block_promotion() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    state, _ = run_ticks(p, state, ScriptedJudge(labels_missing=True), until=10_000)
    # Step 1 (10%) advanced without labels; step 2 is the last before 100 and needs them.
    assert [s.weight for s in state.steps] == [10, 50]
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == ("stepTimeout",)


@pytest.mark.parametrize("problem", [None, "prometheus unreachable"])
def test_no_data_holds_then_rolls_back_at_the_deadline(problem: str | None) -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    d = engine.tick(p, state, obs(0, 30, requests=0, problem=problem), 30.0, ScriptedJudge())
    assert d.state.phase is Phase.PROGRESSING and d.actions == ()
    assert all(r.verdict is Verdict.INCONCLUSIVE for r in d.state.checks)
    state, _ = run_ticks(p, d.state, ScriptedJudge(), until=10_000, requests=0, problem=problem)
    assert state.phase is Phase.ROLLED_BACK
    assert state.failed_checks == ("noData",)
    assert state.finished_at == 120.0  # noDataTimeout, not maxStepDuration
    assert state.reason.startswith("no data")


def test_data_returning_resets_the_no_data_clock() -> None:
    p = make_policy()
    s = engine.start(p, 0.0).state
    j = ScriptedJudge()
    s = engine.tick(p, s, obs(0, 90, requests=0), 90.0, j).state
    s = engine.tick(p, s, obs(0, 100), 100.0, j).state  # data again
    s = engine.tick(p, s, obs(0, 200, requests=0), 200.0, j).state
    assert s.phase is Phase.PROGRESSING or s.step_index > 0
    assert s.last_data_at == 100.0


def test_pause_holds_weight_but_failure_still_rolls_back() -> None:
    p = make_policy()
    s = engine.start(p, 0.0).state
    s = engine.command(p, s, Command.PAUSE, 1.0).state
    assert s.phase is Phase.PAUSED
    s2, actions = run_ticks(p, s, ScriptedJudge(), until=1000)
    assert s2.step_index == 0 and not [a for a in actions if isinstance(a, SetWeights)]
    assert s2.phase is Phase.PAUSED  # not even maxStepDuration ends a deliberate pause
    d = engine.tick(p, s2, obs(0, 1030, errors=1), 1030.0, ScriptedJudge())
    assert d.state.phase is Phase.ROLLED_BACK and d.actions[0] == SetWeights(ALL_STABLE, d.state.reason, True)


def test_resume_continues_the_schedule() -> None:
    p = make_policy()
    s = engine.start(p, 0.0).state
    s = engine.command(p, s, "pause", 1.0).state
    s = engine.command(p, s, "resume", 2.0).state
    assert s.phase is Phase.PROGRESSING and not s.paused
    s, _ = run_ticks(p, s, ScriptedJudge(), until=10_000)
    assert s.phase is Phase.SUCCEEDED


def test_abort_is_a_manual_rollback() -> None:
    p = make_policy()
    s = engine.start(p, 0.0).state
    d = engine.command(p, s, Command.ABORT, 5.0)
    assert d.state.phase is Phase.ROLLED_BACK and d.state.failed_checks == ("manual",)
    assert d.actions[0] == SetWeights(ALL_STABLE, d.state.reason, True)
    # A finished rollout ignores further orders.
    assert engine.command(p, d.state, Command.RESUME, 6.0).actions == ()


def test_approval_gate_waits_then_promotes_and_still_rolls_back_while_waiting() -> None:
    p = make_policy(approval="beforePromotion")
    s = engine.start(p, 0.0).state
    s, actions = run_ticks(p, s, ScriptedJudge(), until=1000)
    assert s.phase is Phase.WAITING_FOR_APPROVAL and s.weights.candidate == 50
    assert any(isinstance(a, Announce) and a.kind == "WaitingForApproval" for a in actions)
    # Waiting is not a deadline: a person may take their time.
    assert s.finished_at is None
    # A failure while waiting still rolls back.
    failed = engine.tick(p, s, obs(60, 1030, errors=3), 1030.0, ScriptedJudge())
    assert failed.state.phase is Phase.ROLLED_BACK
    s = engine.command(p, s, Command.APPROVE, 1001.0).state
    s, _ = run_ticks(p, s, ScriptedJudge(), until=2000)
    assert s.phase is Phase.SUCCEEDED and s.weights.candidate == 100


def test_blue_green_previews_on_mirrored_traffic_then_switches_and_watches() -> None:
    p = make_policy(
        strategy="blueGreen",
        blue_green=BlueGreenSpec(mirror_percent=100, preview_duration_s=120, post_switch_window_s=90),
    )
    d = engine.start(p, 0.0)
    assert d.actions[0] == SetWeights(Weights(100, 0, mirror_percent=100), "start")
    j = ScriptedJudge()
    s, actions = run_ticks(p, d.state, j, until=10_000)
    writes = [a.weights for a in actions if isinstance(a, SetWeights)]
    # The switch keeps the holdback (5% by default) on stable, the promotion retires it.
    assert writes == [Weights(5, 95), Weights(0, 100)]
    assert s.phase is Phase.SUCCEEDED and s.finished_at == 120 + 90
    assert j.contexts[0].mirrored and not j.contexts[-1].mirrored
    # After the switch relative checks compare with the holdback, at the same time.
    assert j.contexts[-1].stable_baseline is None
    assert j.contexts[-1].candidate_share == pytest.approx(0.95)


def test_blue_green_without_holdback_compares_with_stables_preview() -> None:
    p = make_policy(
        strategy="blueGreen",
        blue_green=BlueGreenSpec(
            mirror_percent=100, preview_duration_s=120, post_switch_window_s=90, holdback_percent=0
        ),
    )
    j = ScriptedJudge()
    s, actions = run_ticks(p, engine.start(p, 0.0).state, j, until=10_000)
    assert [a.weights for a in actions if isinstance(a, SetWeights)] == [Weights(0, 100)]
    assert s.phase is Phase.SUCCEEDED
    assert j.contexts[-1].stable_baseline is not None


def test_blue_green_failure_after_switch_switches_back() -> None:
    p = make_policy(strategy="blueGreen", blue_green=BlueGreenSpec(100, 60, 300))
    s = engine.start(p, 0.0).state
    s, _ = run_ticks(p, s, ScriptedJudge(), until=61)
    assert s.weights == Weights(5, 95)
    d = engine.tick(p, s, obs(60, 120, errors=2), 120.0, ScriptedJudge())
    assert d.state.phase is Phase.ROLLED_BACK and d.actions[0].weights == ALL_STABLE  # type: ignore[union-attr]


def test_budget_is_split_across_judged_steps() -> None:
    p = make_policy()  # steps 10, 50, 100: two judged windows
    j = ScriptedJudge()
    s = engine.start(p, 0.0).state
    engine.tick(p, s, obs(0, 30), 30.0, j)
    assert j.contexts[0].alpha == pytest.approx(0.01 / 2)
    assert j.contexts[0].candidate_share == pytest.approx(0.10)


def test_state_round_trips_through_json_and_resumes_exactly() -> None:
    """A rollout stopped at any tick and resumed from saved state makes the same decisions."""
    p = make_policy()
    j = ScriptedJudge()

    def drive(state: RolloutState, start_t: float, end_t: float, save_each_tick: bool) -> list[object]:
        trace: list[object] = []
        t = start_t
        while t < end_t and not state.terminal:
            t += 30
            errors = 1 if t == 90 else 0  # fails in step 2 (60..120)
            d = engine.tick(p, state, obs(state.window_start, t, errors=errors), t, j)
            state = d.state
            if save_each_tick:
                state = RolloutState.from_dict(json.loads(json.dumps(state.to_dict())))
            trace.append((t, state.to_dict(), [repr(a) for a in d.actions]))
        return trace

    s0 = engine.start(p, 0.0).state
    straight = drive(s0, 0, 1000, save_each_tick=False)
    resumed = drive(s0, 0, 1000, save_each_tick=True)
    assert straight == resumed
    assert straight[-1][1]["phase"] == "RolledBack"  # type: ignore[index]


def test_fingerprint_changes_with_the_candidate() -> None:
    p = make_policy()
    q = replace(p, candidate=replace(p.candidate, version="3.0"))
    assert engine.policy_fingerprint(p) != engine.policy_fingerprint(q)


def test_terminal_state_ignores_ticks() -> None:
    p = make_policy()
    s = engine.command(p, engine.start(p, 0.0).state, Command.ABORT, 1.0).state
    assert engine.tick(p, s, obs(0, 30, errors=9), 30.0, ScriptedJudge()) == engine.Decision(s)


def test_completed_steps_windows_are_carried_forward_to_the_judge() -> None:
    p = make_policy()
    j = ScriptedJudge()
    s = engine.start(p, 0.0).state
    s, _ = run_ticks(p, s, j, until=90)  # step 1 ends at 60, step 2 judged at 90
    assert s.step_index == 1
    assert [share for share, _ in j.contexts[-1].earlier_windows] == [0.10]
    _, window = j.contexts[-1].earlier_windows[0]
    assert (window.since, window.at) == (0.0, 60.0)
    # ...and survive a save and load.
    again = RolloutState.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again.earlier_windows == s.earlier_windows


def test_resume_returns_to_the_gate_only_if_it_was_waiting_there() -> None:
    p = make_policy(approval="beforePromotion")
    s = engine.start(p, 0.0).state
    s = engine.command(p, s, Command.PAUSE, 1.0).state
    s = engine.command(p, s, Command.RESUME, 2.0).state
    assert s.phase is Phase.PROGRESSING  # step 1 is not the gate
    s, _ = run_ticks(p, s, ScriptedJudge(), until=1000)
    assert s.phase is Phase.WAITING_FOR_APPROVAL
    s = engine.command(p, s, Command.PAUSE, 1001.0).state
    s = engine.command(p, s, Command.RESUME, 1002.0).state
    assert s.phase is Phase.WAITING_FOR_APPROVAL


def test_an_early_approval_does_not_skip_the_gate() -> None:
    p = make_policy(approval="beforePromotion")
    s = engine.start(p, 0.0).state
    d = engine.command(p, s, Command.APPROVE, 1.0)
    assert d.actions == () and not d.state.approved
    s, _ = run_ticks(p, d.state, ScriptedJudge(), until=1000)
    assert s.phase is Phase.WAITING_FOR_APPROVAL


# ---- the runner's findings: pending rollback, outside moves, recorded rollbacks ---------


def test_a_pending_rollback_is_not_finished_and_every_turn_asks_for_the_write_again() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    rolled = engine.tick(p, state, obs(0, 30, errors=5), 30.0, ScriptedJudge()).state
    failed = engine.rollback_write_failed(rolled, "HTTP 503", retry_at=31.0, first=True)
    assert failed.state.rollback_pending and not failed.state.terminal
    assert [a.kind for a in failed.announcements] == ["RollbackFailing"]
    assert failed.announcements[0].severity == "warning"
    assert failed.state.next_tick_at(p) == 31.0
    for d in (
        engine.tick(p, failed.state, obs(0, 31), 31.0, ScriptedJudge()),
        engine.command(p, failed.state, Command.ABORT, 31.0),
    ):
        assert d.actions == (SetWeights(ALL_STABLE, rolled.reason, rollback=True),)
    again = engine.rollback_write_failed(failed.state, "HTTP 503", retry_at=33.0, first=False)
    assert again.announcements == []
    done = engine.rollback_written(again.state)
    assert done.state.terminal and done.state.phase is Phase.ROLLED_BACK
    assert [a.kind for a in done.announcements] == ["RolledBack"]
    assert RolloutState.from_dict(json.loads(json.dumps(failed.state.to_dict()))) == failed.state


def test_an_outside_move_towards_stable_ends_aborted_without_a_write() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    d = engine.moved_outside(state, 40.0, ALL_STABLE, "VirtualService models/x")
    assert d.state.phase is Phase.ABORTED and d.state.terminal and d.state.weights == ALL_STABLE
    assert d.weight_writes == []
    assert d.state.reason.startswith("VirtualService models/x moved to 100/0 outside mesh-canary")
    assert [a.kind for a in d.announcements] == ["Aborted"]
    assert engine.tick(p, d.state, obs(0, 60), 60.0, ScriptedJudge()).actions == ()


def test_towards_stable_compares_the_candidates_share_then_the_mirror() -> None:
    assert engine.towards_stable(Weights(100, 0), Weights(50, 50))
    assert not engine.towards_stable(Weights(40, 60), Weights(50, 50))
    assert engine.towards_stable(Weights(100, 0), Weights(100, 0, mirror_percent=100))
    assert not engine.towards_stable(Weights(50, 50), Weights(50, 50))


def test_a_recorded_rollback_is_adopted_as_rolled_back() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    d = engine.recorded_rollback(state, 50.0, "aborted by a person (manual rollback)", ("manual",))
    assert d.state.phase is Phase.ROLLED_BACK and d.state.failed_checks == ("manual",)
    assert d.weight_writes == [] and d.state.weights == ALL_STABLE


# ---- strategies: chosen once from a registry, never by comparing names ---------------


def test_every_strategy_of_the_model_has_one_object_and_an_unknown_one_is_named() -> None:
    assert set(engine.STRATEGIES) == {"canary", "blueGreen"}
    for name, strategy in engine.STRATEGIES.items():
        assert strategy.name == name
        assert engine.strategy_of(replace(make_policy(), strategy=name)) is strategy  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"no strategy 'rainbow'; known strategies: blueGreen, canary"):
        engine.start(replace(make_policy(), strategy="rainbow"), 0.0)  # type: ignore[arg-type]


def test_the_engine_compares_no_strategy_names() -> None:
    """A new strategy is one class and one registry line: no `policy.strategy == ...` left."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(engine))
    compared = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Constant) and side.value in engine.STRATEGIES
            for side in (node.left, *node.comparators)
        )
    ]
    assert compared == []


class Straight(engine.Canary):
    """A throw-away strategy: all traffic at once, judged for one window."""

    name = "straight"

    def schedule(self, policy: Policy) -> tuple[int, ...]:
        return (100,)

    def weights(self, policy: Policy, index: int) -> Weights:
        return Weights.candidate_at(100)

    def started(self, weights: Weights) -> str:
        return "everything at once"


def test_a_registered_strategy_drives_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(engine.STRATEGIES, "straight", Straight())
    policy = replace(make_policy(), strategy="straight")  # type: ignore[arg-type]
    d = engine.start(policy, 0.0)
    assert d.weight_writes[0].weights == Weights.candidate_at(100)
    assert d.announcements[0].message.endswith("everything at once")
    assert engine.schedule(policy) == (100,)
