"""The bounded per-tick history (core/timeline.py) and the engine's one call that keeps it."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from mesh_canary.core import engine, timeline
from mesh_canary.core.engine import Phase, RolloutState
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, Verdict
from mesh_canary.core.weights import Weights
from tests.test_engine import ScriptedJudge, make_policy, obs


def _pt(i: int, step: int = 0, phase: str = "Progressing") -> dict[str, Any]:
    return {"at": float(i), "step": step, "phase": phase}


def test_thinning_keeps_the_bound_the_whole_span_and_every_change() -> None:
    points: tuple[timeline.Point, ...] = ()
    for i in range(2000):
        step = 0 if i < 700 else 1 if i < 1500 else 2
        phase = "RolledBack" if i == 1999 else "Progressing"
        points = timeline.appended(points, _pt(i, step, phase), limit=240)
        assert len(points) <= 240
    ats = [p["at"] for p in points]
    assert ats == sorted(ats) and ats[0] == 0.0 and ats[-1] == 1999.0  # the whole rollout, the newest
    # the change of step (and the point before it) and the change of phase are kept
    assert {699.0, 700.0, 1499.0, 1500.0, 1998.0} <= set(ats)
    # older points are sparser than newer ones (thinned), the newest are every tick
    assert ats[-20:] == [float(i) for i in range(1980, 2000)]
    assert ats[1] - ats[0] >= 4


def test_thinning_halves_only_the_oldest_half() -> None:
    pts = [_pt(i) for i in range(11)]
    kept = [p["at"] for p in timeline.thin(pts, limit=10)]
    assert kept == [0.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]


def test_every_judged_tick_leaves_a_point_and_the_rollback_is_the_last() -> None:
    policy = make_policy()
    state = engine.start(policy, 0.0).state
    judge = ScriptedJudge()
    for t in (30.0, 60.0, 90.0):
        state = engine.tick(policy, state, obs(0.0, t), t, judge).state
    state = engine.tick(policy, state, obs(90.0, 120.0, errors=3), 120.0, judge).state
    assert state.phase is Phase.ROLLED_BACK
    points = timeline.points_of(state.timeline)
    assert [p["at"] for p in points] == [30.0, 60.0, 90.0, 120.0]
    assert [p["weight"] for p in points] == [10, 50, 50, 0]  # advanced at 60s, rolled back at 120s
    assert [p["phase"] for p in points][-1] == "RolledBack"
    assert points[-1]["candidate"] == {
        "requests": 100,
        "errors": 3,
        "p50Ms": None,
        "p99Ms": None,
        "labeled": 0,
        "correct": 0,
    }
    assert points[-1]["checks"]["errorRate"][0] == "fail"
    assert timeline.error_rate(points[-1]["candidate"]) == 0.03
    # a finished rollout's tick changes nothing, and leaves no point
    again = engine.tick(policy, state, obs(90.0, 150.0), 150.0, judge).state
    assert again.timeline == state.timeline
    # the history survives a save and a load, as plain JSON
    text = json.dumps(state.to_dict(), allow_nan=False)
    assert RolloutState.from_dict(json.loads(text)).timeline == json.loads(json.dumps(state.timeline))


def test_a_retried_rollback_leaves_no_point() -> None:
    policy = make_policy()
    state = engine.start(policy, 0.0).state
    state = engine.tick(policy, state, obs(0.0, 30.0, errors=1), 30.0, ScriptedJudge()).state
    pending = engine.rollback_write_failed(state, "down", 40.0, first=True).state
    after = engine.tick(policy, pending, obs(0.0, 40.0), 40.0, ScriptedJudge()).state
    assert len(timeline.points_of(after.timeline)) == 1


def test_an_old_state_without_a_history_loads() -> None:
    policy = make_policy()
    d = engine.start(policy, 0.0).state.to_dict()
    del d["timeline"]
    assert RolloutState.from_dict(d).timeline == {}


def test_a_point_holds_readable_window_values_and_each_checks_tolerance() -> None:
    hist = Histogram((10.0, 50.0, 100.0, float("inf")), (40.0, 90.0, 99.0, 100.0))
    window = Observation(
        since=0.0,
        at=30.0,
        stable=VersionCounts(requests=100.4, errors=1, latency_ms=hist),
        candidate=VersionCounts(
            requests=200, errors=4, latency_ms=hist, confusion={("a", "a"): 9.0, ("a", "b"): 1.0}
        ),
    )
    p = timeline.point(
        30.0,
        0,
        "Progressing",
        Weights.candidate_at(10),
        window,
        (),
    )
    assert p["stable"]["requests"] == 100 and p["candidate"]["correct"] == 9
    assert p["stable"]["p50Ms"] == 18.0 and p["stable"]["p99Ms"] == 100.0
    assert timeline.accuracy(p["candidate"]) == 0.9
    check = Check(metric="errorRate", name="errorRate", max_increase=0.005)
    r = CheckResult(
        "errorRate", "errorRate", Verdict.INCONCLUSIVE, "x", 0.01, None, -0.002, 0.031234567,
        bound="<= stable + 0.50%", quantity="candidate - stable (error rate)",
    )  # fmt: skip
    assert timeline.check_point(r) == ["inconclusive", 0.01, -0.002, 0.03123, "diff"]
    assert timeline.check_info(check, r) == {
        "quantity": "candidate - stable (error rate)",
        "tag": "diff",
        "unit": "rate",
        "tolerance": [None, 0.005],
    }
    acc = Check(metric="accuracy", name="accuracy", max_decrease=0.02)
    ra = CheckResult(
        "accuracy", "accuracy", Verdict.PASS, "x", bound=">= stable - 2%", quantity="candidate - stable"
    )
    assert timeline.tolerance(acc, ra) == [-0.02, None]
    lat = Check(metric="latency", name="p99", quantile=0.99, max_increase_ratio=0.1)
    rl = CheckResult(
        "p99", "latency", Verdict.PASS, "x", bound="<= stable x 1.1", quantity="candidate / stable"
    )
    assert timeline.check_unit(lat, rl) == "ratio" and timeline.tolerance(lat, rl) == [None, 1.1]
    no_data = timeline.point(
        30.0,
        0,
        "Progressing",
        Weights.candidate_at(10),
        Observation(0, 30, problem="down"),
        (),
    )
    assert no_data["stable"] is None and no_data["candidate"] is None


class TwoBoundsJudge:
    """errorRate shows its absolute bound first, then its relative one (the most telling)."""

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, checks: Any, window: Observation, ctx: Any) -> list[CheckResult]:
        self.calls += 1
        quantity, bound = (
            ("candidate (error rate)", "<= 5.00%")
            if self.calls == 1
            else ("candidate - stable (error rate)", "<= stable + 1.00%")
        )
        return [
            CheckResult(c.name, c.metric, Verdict.INCONCLUSIVE, "x", 0.01, 0.0, 0.0, 0.02, bound, quantity)
            for c in checks
        ]


def test_each_quantity_a_check_shows_is_kept_with_its_tolerance() -> None:
    check = Check(metric="errorRate", name="errorRate", max=0.05, max_increase=0.01)
    policy = make_policy(analysis=replace(make_policy().analysis, checks=(check,)))
    state = engine.start(policy, 0.0).state
    judge = TwoBoundsJudge()
    for t in (30.0, 40.0):
        state = engine.tick(policy, state, obs(0.0, t), t, judge).state
    infos = state.timeline["checks"]["errorRate"]
    assert list(infos) == ["value", "diff"]
    assert infos["value"]["tolerance"] == [None, 0.05] and infos["diff"]["tolerance"] == [None, 0.01]
    assert [p["checks"]["errorRate"][4] for p in timeline.points_of(state.timeline)] == ["value", "diff"]


def test_a_damaged_history_is_read_around_not_trusted() -> None:
    assert timeline.points_of({"points": [{"at": "soon"}, 5, {"at": 3.0}]}) == ({"at": 3.0},)
    assert timeline.points_of({"points": "x"}) == ()
    d = engine.start(make_policy(), 0.0).state.to_dict()
    d["timeline"] = 5
    assert RolloutState.from_dict(d).timeline == {}
