"""The fallback destination (core/fallback.py): when the candidate fails and stable breaks its
absolute limits in the same window, one write of 100% fallback; only a person restores stable.

The real judge (AnytimeJudge) decides stable's limits; the runner's part uses the fake
adapters of test_runner (unit tier)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import replace

import pytest
import yaml

from mesh_canary.cli import read_policy
from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Phase, RolloutState, SetWeights
from mesh_canary.core.fallback import ALL_FALLBACK, limit_checks, stable_failures
from mesh_canary.core.judge import AnytimeJudge
from mesh_canary.core.model import AnalysisSpec, CanarySpec, Check, Destination, Policy
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.kube.orders import refusal
from mesh_canary.kube.status import condition, render_status
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.simulation.simulate import simulate_rollout
from mesh_canary.simulation.traffic import Scenario, ScenarioError, load_scenario, load_scenario_text
from tests.conftest import make_policy as shared_policy
from tests.output_schema import check_output
from tests.test_engine import ScriptedJudge
from tests.test_runner import FakeRouter, Journal, JournalNotifier, JournalStore

ROOT = pathlib.Path(__file__).parents[1]
FALLBACK = Destination("fraud-scorer-fallback", "v0")
CHECKS = (
    Check(metric="errorRate", name="errorRate", max=0.05, max_increase=0.01),
    Check(metric="accuracy", name="accuracy", max_decrease=0.02, min_labeled=100),
)


def policy(fallback: Destination | None = FALLBACK, checks: Sequence[Check] = CHECKS) -> Policy:
    return shared_policy(
        versions=("1.0", "2.0"),
        fallback=fallback,
        canary=CanarySpec(steps=(10, 50, 100), min_step_duration_s=60, max_step_duration_s=300),
        analysis=AnalysisSpec(
            interval_s=30, confidence=0.99, min_requests=50, no_data_timeout_s=120, checks=tuple(checks)
        ),
    )


def window(
    stable: tuple[float, float] = (2000, 4),
    candidate: tuple[float, float] = (200, 40),
    problem: str | None = None,
) -> Observation:
    """(requests, errors) of each version over [0, 30]."""
    return Observation(
        0.0,
        30.0,
        VersionCounts(requests=stable[0], errors=stable[1]),
        VersionCounts(requests=candidate[0], errors=candidate[1]),
        problem=problem,
    )


BOTH_BROKEN = window(stable=(2000, 300))  # stable 15%, candidate 20%: both above max 5%


def tick(p: Policy, obs: Observation, judge: object | None = None) -> engine.Decision:
    state = engine.start(p, 0.0).state
    return engine.tick(p, state, obs, 30.0, judge or AnytimeJudge())  # type: ignore[arg-type]


def test_both_broken_writes_100_percent_fallback_first_and_announces() -> None:
    d = tick(policy(), BOTH_BROKEN)
    assert isinstance(d.actions[0], SetWeights)
    assert d.actions[0].weights == ALL_FALLBACK and d.actions[0].rollback
    assert d.weight_writes == [d.actions[0]]  # one write, nothing before it
    assert [a.kind for a in d.announcements] == ["FellBack"]
    assert d.announcements[0].severity == "warning"
    s = d.state
    assert s.phase is Phase.ROLLED_BACK and s.terminal and s.weights == Weights(0, 0, 100)
    assert "errorRate" in s.failed_checks and stable_failures(s.failed_checks) == ["errorRate"]
    assert "stable 1.0 breaks its limits too" in s.reason and "restore-stable" in s.reason


def test_without_a_fallback_both_broken_rolls_back_to_stable() -> None:
    d = tick(policy(fallback=None), BOTH_BROKEN)
    assert d.actions[0] == SetWeights(ALL_STABLE, d.state.reason, rollback=True)
    assert d.state.weights == ALL_STABLE and [a.kind for a in d.announcements] == ["RolledBack"]


def test_a_healthy_stable_takes_the_rollback() -> None:
    d = tick(policy(), window(stable=(2000, 4)))
    assert d.state.phase is Phase.ROLLED_BACK and d.state.weights == ALL_STABLE
    assert d.weight_writes[0].weights == ALL_STABLE


def test_missing_stable_data_is_never_a_reason_to_switch() -> None:
    # No requests on stable, or too few to prove anything: the rollback to stable stands.
    assert tick(policy(), window(stable=(0, 0))).state.weights == ALL_STABLE
    assert tick(policy(), window(stable=(10, 3))).state.weights == ALL_STABLE
    # No data at all is no verdict on anyone: nothing is written.
    d = tick(policy(), window(stable=(2000, 300), problem="prometheus unreachable"))
    assert d.weight_writes == [] and not d.state.terminal


class _CandidateOnly:
    """Fails the candidate; raises when asked about stable (its counts in the candidate's place)."""

    def evaluate(self, checks: Sequence[Check], w: Observation, ctx: JudgeContext) -> list[CheckResult]:
        if w.candidate is w.stable:
            raise RuntimeError("cannot judge")
        return AnytimeJudge().evaluate(checks, w, ctx)


def test_a_judge_that_cannot_judge_stable_leaves_the_rollback_to_stable() -> None:
    d = tick(policy(), BOTH_BROKEN, _CandidateOnly())
    assert d.state.phase is Phase.ROLLED_BACK and d.state.weights == ALL_STABLE


def test_relative_bounds_say_nothing_about_stable() -> None:
    only_relative = (Check(metric="errorRate", name="errorRate", max_increase=0.01),)
    assert limit_checks(policy(checks=only_relative)) == ()
    # A judge that would fail stable's errors too, were it asked: it is not.
    d = tick(policy(checks=only_relative), BOTH_BROKEN, ScriptedJudge())
    assert d.state.phase is Phase.ROLLED_BACK and d.state.weights == ALL_STABLE
    kept = limit_checks(policy())
    assert [(c.name, c.max, c.max_increase) for c in kept] == [("errorRate", 0.05, None)]


def test_on_the_fallback_nothing_but_a_person_moves_traffic() -> None:
    p = policy()
    fell = tick(p, BOTH_BROKEN).state
    # Later windows with a healthy stable: no flapping back, no write.
    healthy = Observation(30.0, 60.0, VersionCounts(requests=2000), VersionCounts(requests=200))
    assert engine.tick(p, fell, healthy, 60.0, AnytimeJudge()).actions == ()
    for cmd in (Command.ABORT, Command.RESUME, Command.APPROVE, Command.PROMOTE_FULL):
        assert engine.command(p, fell, cmd, 60.0).actions == ()
    back = engine.command(p, fell, Command.RESTORE_STABLE, 90.0)
    assert back.actions[0] == SetWeights(ALL_STABLE, back.actions[0].reason, rollback=True)  # type: ignore[union-attr]
    assert [a.kind for a in back.announcements] == ["RestoredStable"]
    assert back.state.weights == ALL_STABLE and back.state.phase is Phase.ROLLED_BACK
    assert "by a person" in back.state.reason
    # Restoring what is already on stable does nothing.
    assert engine.command(p, back.state, Command.RESTORE_STABLE, 95.0).actions == ()


def test_a_pending_fallback_write_is_retried_as_a_fallback_and_survives_a_restart() -> None:
    fell = tick(policy(), BOTH_BROKEN).state
    pending = engine.rollback_write_failed(fell, "api down", 40.0, first=True)
    assert "100% fallback could not be written" in pending.announcements[0].message
    retry = engine.retry_rollback(pending.state)
    assert retry.weight_writes[0].weights == ALL_FALLBACK
    assert "rolled back to 100% fallback" in engine.rollback_written(pending.state).announcements[0].message
    again = RolloutState.from_dict(fell.to_dict())
    assert again.weights == ALL_FALLBACK and again.failed_checks == fell.failed_checks


class _BothBroken:
    def read(self, since: float, now: float) -> Observation:
        return Observation(since, now, BOTH_BROKEN.stable, BOTH_BROKEN.candidate)


def _runner(journal: Journal) -> tuple[RolloutRunner, FakeRouter, JournalNotifier]:
    router, notifier = FakeRouter(journal), JournalNotifier(journal)
    runner = RolloutRunner(
        policy(), router, _BothBroken(), JournalStore(journal), notifier, VirtualClock(), AnytimeJudge()
    )
    return runner, router, notifier


def test_the_runner_writes_the_fallback_first_then_saves_then_announces() -> None:
    j = Journal()
    runner, router, _ = _runner(j)
    result = runner.run(timeout_s=600)
    assert result.outcome == "rolled_back" and result.exit_code == 3 and router.weights == ALL_FALLBACK
    i = j.entries.index(("weights", ALL_FALLBACK))
    assert j.entries[i + 1] == ("save", "RolledBack") and j.entries[i + 2] == ("notify", "FellBack")
    assert [w for k, w in j.entries if k == "weights"] == [Weights.candidate_at(10), ALL_FALLBACK]
    # A person's order brings it back: one write of 100% stable, then the announcement.
    state = runner.restore_stable()
    assert router.weights == ALL_STABLE and state.weights == ALL_STABLE
    assert j.entries[-3:] == [("weights", ALL_STABLE), ("save", "RolledBack"), ("notify", "RestoredStable")]


def test_the_runner_never_writes_the_fallback_over_a_persons_move_to_stable() -> None:
    j = Journal()
    runner, router, notifier = _runner(j)
    runner.start_or_resume()
    router.weights = ALL_STABLE  # a person moved everyone back to stable before the analysis
    runner.clock.sleep(30)
    state = runner.tick_once()
    assert router.weights == ALL_STABLE and state.phase is Phase.ABORTED
    assert ALL_FALLBACK not in [w for k, w in j.entries if k == "weights"]
    assert notifier.kinds[-1] == "Aborted"


def test_the_status_says_on_fallback_until_a_person_restores_stable() -> None:
    p = policy()
    fell = tick(p, BOTH_BROKEN).state
    status = render_status(None, state=fell, policy=p, generation=1, now=31.0)
    on = condition(status, "OnFallback") or {}
    assert status["phase"] == "RolledBack" and status["weights"]["fallback"] == 100
    assert on["status"] == "True" and on["reason"] == "StableBroke" and "errorRate" in on["message"]
    back = engine.command(p, fell, Command.RESTORE_STABLE, 60.0).state
    after = render_status(status, state=back, policy=p, generation=1, now=61.0)
    assert (condition(after, "OnFallback") or {})["status"] == "False"
    # A rollout that never fell back shows no such condition.
    plain = render_status(None, state=tick(p, window()).state, policy=p, generation=1, now=31.0)
    assert condition(plain, "OnFallback") is None


# --------------------------------------------------------------------------- simulation


def _scenario(name: str) -> Scenario:
    return load_scenario_text((ROOT / "scenarios" / name).read_text(), name)


def test_scenario_fallback_copies_stables_missing_fields_and_names_bad_ones() -> None:
    both = _scenario("both-break.yaml")
    assert both.fallback is not None
    assert (both.fallback.error_rate, both.fallback.accuracy) == (0.004, 0.86)
    assert both.fallback.latency == both.stable.latency  # copied from stable
    assert _scenario("shared-change.yaml").fallback is None
    doc = yaml.safe_load((ROOT / "scenarios" / "both-break.yaml").read_text())
    doc["versions"]["fallback"] = {"errorRate": 2}
    with pytest.raises(ScenarioError, match=r"versions\.fallback\.errorRate"):
        load_scenario(doc)


def test_simulation_both_break_sends_users_to_the_fallback_and_says_what_it_served() -> None:
    scenario = _scenario("both-break.yaml")
    with_fallback = read_policy(str(ROOT / "policies" / "fallback.yaml"))
    result = simulate_rollout(with_fallback, scenario, seed=7)
    check_output(result, "simulation")
    assert result["outcome"] == "rolled_back" and result["failedChecks"] == ["errorRate", "stable:errorRate"]
    # Served from the switch to the scenario's end (30m) at 20 rps, at the fallback's rates.
    n = result["fallbackRequests"]
    expected = 20 * (scenario.duration_s - result["decidedAtS"])
    assert 0.9 * expected < n < 1.1 * expected
    assert 0.001 < result["fallbackErrors"] / n < 0.01 and 0.1 < result["fallbackWrong"] / n < 0.2
    # The same rollout without a fallback goes back to the broken stable; the candidate's
    # draws are the same (the fallback has a random stream of its own).
    without = simulate_rollout(replace(with_fallback, fallback=None), scenario, seed=7)
    assert without["failedChecks"] == ["errorRate"] and "fallbackRequests" not in without
    same = ("decidedAtS", "candidateRequests", "candidateErrors", "candidateWrong", "steps")
    assert {k: without[k] for k in same} == {k: result[k] for k in same}


# --------------------------------------------------------------------------- after a rollback

HEALTHY_STABLE = window(stable=(2000, 4))  # the candidate fails, stable holds 0.2%


def watching_policy() -> Policy:
    return replace(policy(), fallback_watch_s=600.0)


def later(since: float, at: float, stable_errors: float = 4, requests: float = 2000) -> Observation:
    """A window after the rollback: all traffic on stable, none on the candidate."""
    return Observation(since, at, VersionCounts(requests=requests, errors=stable_errors), VersionCounts())


def test_after_a_rollback_stable_is_watched_and_a_proven_break_sends_everyone_to_the_fallback() -> None:
    p = watching_policy()
    rolled = tick(p, HEALTHY_STABLE)
    s = rolled.state
    assert rolled.weight_writes[0].weights == ALL_STABLE and s.watch_until == 630.0
    assert not s.terminal and engine.outcome_of(s) is engine.Outcome.ROLLED_BACK
    assert s.window_start == 30.0  # the windows judged from now on start with the rollback
    judge = AnytimeJudge()
    # A healthy stable, and no data at all: nothing happens (missing data never switches).
    quiet = engine.tick(p, s, later(30, 60), 60.0, judge)
    assert quiet.actions == () and quiet.state.watch_until == 630.0
    blind = engine.tick(p, quiet.state, Observation(30, 90, problem="prometheus down"), 90.0, judge)
    assert blind.actions == () and not blind.state.terminal
    # Stable breaks: one write of 100% fallback, first, then FellBack; finished.
    broke = engine.tick(p, blind.state, later(30, 120, stable_errors=300), 120.0, judge)
    assert broke.actions[0] == SetWeights(ALL_FALLBACK, broke.state.reason, rollback=True)
    assert [a.kind for a in broke.announcements] == ["FellBack"]
    assert broke.state.terminal and broke.state.weights == ALL_FALLBACK
    assert "after the rollback, stable 1.0 breaks its limits too" in broke.state.reason
    assert stable_failures(broke.state.failed_checks) == ["errorRate"]


def test_the_watch_ends_when_its_time_is_up_and_a_person_may_end_it_sooner() -> None:
    p = watching_policy()
    s = tick(p, HEALTHY_STABLE).state
    done = engine.tick(p, s, later(30, 630), 630.0, AnytimeJudge())
    assert done.actions == () and done.state.terminal and done.state.weights == ALL_STABLE
    again = RolloutState.from_dict(s.to_dict())
    assert again.watch_until == 630.0
    kept = engine.command(p, s, Command.RESTORE_STABLE, 100.0)
    assert kept.weight_writes == [] and [a.kind for a in kept.announcements] == ["StableKept"]
    assert kept.state.terminal and kept.state.weights == ALL_STABLE
    # Other orders do nothing while watching: no second rollback.
    assert engine.command(p, s, Command.ABORT, 100.0).actions == ()


def test_no_watch_after_a_persons_abort_nor_without_watch_after_rollback() -> None:
    p = watching_policy()
    started = engine.start(p, 0.0).state
    aborted = engine.command(p, started, Command.ABORT, 10.0).state
    assert aborted.terminal and aborted.watch_until is None
    assert tick(policy(), HEALTHY_STABLE).state.watch_until is None  # default 0s: no watch


def test_watch_after_rollback_is_read_from_the_policy() -> None:
    p = read_policy(str(ROOT / "policies" / "fallback.yaml"))
    assert p.fallback_watch_s == 1800.0
    assert read_policy(str(ROOT / "policies" / "local-fallback.yaml")).fallback_watch_s == 0.0


def test_simulation_stable_breaks_after_the_rollback() -> None:
    scenario = _scenario("stable-breaks-after.yaml")
    result = simulate_rollout(read_policy(str(ROOT / "policies" / "fallback.yaml")), scenario, seed=3)
    check_output(result, "simulation")
    assert result["outcome"] == "rolled_back" and result["decidedAtS"] < 20 * 60
    assert result["failedChecks"] == ["errorRate", "stable:errorRate"]
    # Switched after stable broke at 20m: the fallback served part of the last 25 minutes.
    assert 0 < result["fallbackRequests"] < 20 * (scenario.duration_s - 20 * 60)


class _StableBreaksAt:
    """The candidate fails from the start; stable fails 15% from ``at`` on (counts since ``since``)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def read(self, since: float, now: float) -> Observation:
        broken = max(now - max(since, self.at), 0.0) * 100 * 0.15
        return Observation(
            since,
            now,
            VersionCounts(requests=(now - since) * 100, errors=broken),
            VersionCounts(requests=200, errors=40),
        )


def _watching_runner(j: Journal, at: float) -> tuple[RolloutRunner, FakeRouter]:
    router = FakeRouter(j)
    runner = RolloutRunner(
        watching_policy(),
        router,
        _StableBreaksAt(at),
        JournalStore(j),
        JournalNotifier(j),
        VirtualClock(),
        AnytimeJudge(),
    )
    return runner, router


def test_the_runner_keeps_watching_after_the_rollback_and_writes_the_fallback_when_stable_breaks() -> None:
    j = Journal()
    runner, router = _watching_runner(j, at=200.0)
    result = runner.run(timeout_s=3600)
    assert result.outcome == "rolled_back" and result.state.terminal and router.weights == ALL_FALLBACK
    writes = [w for k, w in j.entries if k == "weights"]
    assert writes == [Weights.candidate_at(10), ALL_STABLE, ALL_FALLBACK]
    i = j.entries.index(("weights", ALL_FALLBACK))
    assert j.entries[i + 1] == ("save", "RolledBack") and j.entries[i + 2] == ("notify", "FellBack")


def test_a_run_that_times_out_while_watching_has_rolled_back() -> None:
    runner, router = _watching_runner(Journal(), at=1e9)  # stable never breaks
    result = runner.run(timeout_s=100)
    assert result.outcome == "rolled_back" and result.exit_code == 3 and router.weights == ALL_STABLE
    assert result.state.watch_until is not None  # still watching when the run's time ran out


def test_the_status_says_watching_then_watch_ended() -> None:
    p = watching_policy()
    s = tick(p, HEALTHY_STABLE).state
    watching = render_status(None, state=s, policy=p, generation=1, now=31.0)
    assert (condition(watching, "OnFallback") or {})["reason"] == "WatchingStable"
    assert watching["history"] == []  # not finished while watching
    done = engine.tick(p, s, later(30, 630), 630.0, AnytimeJudge()).state
    ended = render_status(watching, state=done, policy=p, generation=1, now=631.0)
    assert (condition(ended, "OnFallback") or {})["reason"] == "WatchEnded"
    assert ended["history"][-1]["outcome"] == "rolled_back"


def test_orders_while_watching_or_on_the_fallback() -> None:
    watching = {"phase": "RolledBack", "weights": ALL_STABLE.to_dict(), "rollout": {"watchUntil": 630.0}}
    on = {"phase": "RolledBack", "weights": ALL_FALLBACK.to_dict(), "rollout": {"watchUntil": None}}
    done = {"phase": "RolledBack", "weights": ALL_STABLE.to_dict(), "rollout": {"watchUntil": None}}
    assert refusal("restore-stable", "fs", watching) is None and refusal("restore-stable", "fs", on) is None
    assert "not on its fallback" in (refusal("restore-stable", "fs", done) or "")
    assert "restore-stable fs` ends the watch" in (refusal("retry", "fs", watching) or "")
    assert refusal("retry", "fs", done) is None
