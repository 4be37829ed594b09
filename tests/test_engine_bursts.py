"""The engine holds a step's weight while a check sets aside a burst (checks/dispersion.py),
with a fake judge whose tally says when a burst is under way, and a virtual clock."""

from __future__ import annotations

from collections.abc import Sequence

from mesh_canary.core import engine
from mesh_canary.core.engine import Phase, SetWeights
from mesh_canary.core.model import Check
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Tally, Verdict
from tests.test_engine import make_policy, obs


class BurstyJudge:
    """Every check passes; errorRate's tally says a burst is being set aside from
    ``since`` (inclusive) to ``until`` (exclusive) on the window's clock."""

    def __init__(self, since: float, until: float) -> None:
        self.since = since
        self.until = until

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        bursting = self.since <= window.at < self.until
        return [
            CheckResult(
                c.name,
                c.metric,
                Verdict.PASS,
                "within tolerance",
                enough_data=True,
                tally=Tally(c.name, ctx.step_index, bursting=bursting) if c.metric == "errorRate" else None,
            )
            for c in checks
        ]


def weights_over_time(
    judge: BurstyJudge, until: float = 2_000.0
) -> tuple[engine.RolloutState, list[tuple[float, int]]]:
    """Tick every interval until the rollout ends: (final state, (time, weight) of each write).
    The policy: steps 10, 50, 100; 60 s at least and 300 s at most per step."""
    p = make_policy()
    state = engine.start(p, 0.0).state
    writes: list[tuple[float, int]] = []
    t = 0.0
    while not state.terminal and t < until:
        t += p.analysis.interval_s
        d = engine.tick(p, state, obs(state.window_start, t), t, judge)
        state = d.state
        writes += [(t, a.weights.candidate) for a in d.actions if isinstance(a, SetWeights)]
    return state, writes


def test_without_a_burst_every_step_advances_at_its_minimum_duration() -> None:
    state, writes = weights_over_time(BurstyJudge(since=0.0, until=0.0))
    assert writes == [(60.0, 50), (120.0, 100)]
    assert state.phase is Phase.SUCCEEDED


def test_the_weight_holds_while_a_burst_is_set_aside_and_moves_once_it_ends() -> None:
    # Step 1 (10%) is ready at 60 s, but a burst is set aside from 30 s to 150 s.
    state, writes = weights_over_time(BurstyJudge(since=30.0, until=150.0))
    assert writes == [(150.0, 50), (210.0, 100)]
    assert state.phase is Phase.SUCCEEDED


def test_the_promoting_step_is_not_held_by_a_burst() -> None:
    """Held at the last step through per-version bursts, identical candidates met a burst
    outlasting burstDuration and were rolled back; the promotion goes by the checks alone."""
    # Step 2 (50%, the promoting one) is ready at 120 s; the burst lasts until 240 s.
    state, writes = weights_over_time(BurstyJudge(since=90.0, until=240.0))
    assert writes == [(60.0, 50), (120.0, 100)]
    assert state.phase is Phase.SUCCEEDED


def test_the_hold_is_bounded_by_max_step_duration_then_on_timeout_decides() -> None:
    """A burst that never ends holds no longer than maxStepDuration (300 s here); then
    onTimeout (rollback by default, fail closed)."""
    state, writes = weights_over_time(BurstyJudge(since=30.0, until=10_000.0))
    assert state.phase is Phase.ROLLED_BACK
    assert state.failed_checks == ("stepTimeout",)
    assert state.finished_at == 300.0
    assert writes[-1][1] == 0 and all(w == 0 for _, w in writes)  # only the rollback's write
