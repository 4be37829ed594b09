"""onTimeout, promotion on evidence and honest promotion words (issue 10), with a fake judge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mesh_canary.core import engine
from mesh_canary.core.engine import Announce, Command, Phase, RolloutState, SetWeights
from mesh_canary.core.model import AnalysisSpec, Check, Policy
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict
from tests.test_engine import CHECKS, make_policy, obs, run_ticks

ERR_DIFF = dict(bound="<= stable + 1.00%", quantity="candidate - stable (error rate)")
ACC_DIFF = dict(bound=">= stable - 2.00%", quantity="candidate - stable (accuracy)")


class FakeJudge:
    """Every check gets ``verdict`` with confidence bounds (errors > 0 fail errorRate)."""

    def __init__(self, verdict: Verdict = Verdict.INCONCLUSIVE, lean: bool = False) -> None:
        self.verdict = verdict
        self.lean = lean

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        out = []
        for c in checks:
            if c.metric == "errorRate" and window.candidate.errors > 0:
                out.append(CheckResult(c.name, c.metric, Verdict.FAIL, "errors", enough_data=True))
                continue
            proven = self.verdict is Verdict.PASS
            if c.metric == "errorRate":
                lo, hi, words = -0.002, (0.004 if proven else 0.012), ERR_DIFF
            else:
                lo, hi, words = (-0.015 if proven else -0.021), 0.01, ACC_DIFF
            out.append(
                CheckResult(
                    c.name,
                    c.metric,
                    self.verdict,
                    "ok",
                    estimate=0.0,
                    lower=lo,
                    upper=hi,
                    samples=500,
                    enough_data=True,
                    leaning_fail=self.lean,
                    **words,
                )
            )
        return out


def policy(on_timeout: str = "rollback", promotion: str = "noRegression", no_data_s: float = 120) -> Policy:
    analysis = AnalysisSpec(
        interval_s=30, confidence=0.99, min_requests=10, no_data_timeout_s=no_data_s, checks=CHECKS,
        on_timeout=on_timeout, promotion=promotion,  # type: ignore[arg-type]
    )  # fmt: skip
    return make_policy(analysis=analysis)


def ticks(
    p: Policy, state: RolloutState, judge: FakeJudge, until: float, **obs_kw: object
) -> tuple[RolloutState, list[engine.Action]]:
    return run_ticks(p, state, judge, until, **obs_kw)  # type: ignore[arg-type]


def messages(actions: list[engine.Action], kind: str) -> list[str]:
    return [a.message for a in actions if isinstance(a, Announce) and a.kind == kind]


def test_all_checks_passed_only_when_every_check_is_proven() -> None:
    p = policy()
    state, actions = ticks(p, engine.start(p, 0.0).state, FakeJudge(Verdict.PASS), until=10_000)
    assert state.phase is Phase.SUCCEEDED and state.reason == "all checks passed"
    assert [s.verdict for s in state.steps] == ["pass", "pass", "pass"]
    assert messages(actions, "Promoted")[0].endswith("all checks passed")


def test_an_unproven_promotion_says_what_was_not_ruled_out() -> None:
    p = policy()
    state, actions = ticks(p, engine.start(p, 0.0).state, FakeJudge(), until=10_000)
    assert state.phase is Phase.SUCCEEDED
    assert "all checks passed" not in state.reason
    assert state.reason == (
        "no check found a regression; not proven: "
        "errorRate (a rise of up to 1.2 points is not ruled out), "
        "accuracy (a drop of up to 2.1 points is not ruled out) (at 99%)"
    )
    assert [s.verdict for s in state.steps] == ["advanced", "advanced", "advanced"]
    assert "not proven: errorRate" in messages(actions, "Promoted")[0]
    # Per check in the status: proven or not, and what is (not) ruled out.
    acc = state.checks[1].to_dict()
    assert acc["proven"] is False and acc["notRuledOut"] == "a drop of up to 2.1 points"
    assert CheckResult.from_dict(acc) == state.checks[1]


def test_on_timeout_rollback_is_the_default_and_fails_closed() -> None:
    p = policy()
    assert p.analysis.on_timeout == "rollback"
    state, _ = ticks(p, engine.start(p, 0.0).state, FakeJudge(lean=True), until=10_000)
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == ("stepTimeout",)
    assert state.finished_at == 300


def test_on_timeout_promote_advances_unproven_steps_and_counts_them() -> None:
    p = policy(on_timeout="promote")
    state, actions = ticks(p, engine.start(p, 0.0).state, FakeJudge(lean=True), until=10_000)
    assert state.phase is Phase.SUCCEEDED and state.finished_at == 600  # two steps of 300 s
    assert [a.weights.candidate for a in actions if isinstance(a, SetWeights)] == [50, 100]
    (advanced,) = messages(actions, "StepAdvanced")
    assert "advanced unproven at its timeout (step 1 at 10% still inconclusive" in advanced
    assert "not proven: errorRate" in advanced
    assert state.timeouts == 2
    assert state.reason.startswith("no check found a regression; not proven: errorRate")
    assert state.reason.endswith("2 step(s) advanced unproven at their maxStepDuration")


def test_on_timeout_promote_never_advances_without_data() -> None:
    p = policy(on_timeout="promote", no_data_s=3600)
    state, _ = ticks(p, engine.start(p, 0.0).state, FakeJudge(), until=10_000, requests=0)
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == ("stepTimeout",)


def test_on_timeout_pause_waits_for_a_person() -> None:
    p = policy(on_timeout="pause")
    judge = FakeJudge(lean=True)
    state, actions = ticks(p, engine.start(p, 0.0).state, judge, until=300)
    assert state.phase is Phase.PAUSED and state.paused and not state.terminal
    (paused,) = messages(actions, "Paused")
    assert paused.startswith("paused: step 1 at 10% still inconclusive after 5m")
    assert "rollout resume" in state.reason
    # Paused: nothing advances or rolls back by time alone...
    held, actions = ticks(p, state, judge, until=3000)
    assert held.phase is Phase.PAUSED and not actions
    # ...but a failed check still rolls back at once.
    failed, actions = ticks(p, held, judge, until=3030, errors=5)
    assert failed.phase is Phase.ROLLED_BACK and isinstance(actions[0], SetWeights) and actions[0].rollback

    # resume: another maxStepDuration of waiting, then paused again.
    resumed = engine.command(p, held, Command.RESUME, 3000).state
    again, actions = ticks(p, resumed, judge, until=3300)
    assert again.phase is Phase.PAUSED and again.timeout_paused_at == 3300
    # approve: the step advances unproven at the next tick.
    approved = engine.command(p, again, Command.APPROVE, 3300).state
    assert approved.phase is Phase.PROGRESSING
    moved, actions = ticks(p, approved, judge, until=3330)
    assert moved.step_index == 1 and moved.weights.candidate == 50 and moved.timeouts == 1
    assert "approved by a person" in messages(actions, "StepAdvanced")[0]
    # The approval was for that step only: the next one pauses at its own timeout.
    nxt, _ = ticks(p, moved, judge, until=3330 + 300)
    assert nxt.phase is Phase.PAUSED and nxt.step_index == 1


def test_promotion_proven_holds_the_promoting_step_until_every_check_passes() -> None:
    p = policy(promotion="proven")
    # Ready but unproven: the early steps advance, the promoting one holds, then onTimeout.
    state, _ = ticks(p, engine.start(p, 0.0).state, FakeJudge(), until=10_000)
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == ("stepTimeout",)
    assert [s.weight for s in state.steps] == [10, 50] and state.steps[0].verdict == "advanced"
    # Every check proven: it promotes as soon as it may.
    state, _ = ticks(p, engine.start(p, 0.0).state, FakeJudge(Verdict.PASS), until=10_000)
    assert state.phase is Phase.SUCCEEDED and state.reason == "all checks passed"
    # proven + onTimeout promote: the held step promotes at its timeout, saying so.
    p2 = replace(p, analysis=replace(p.analysis, on_timeout="promote"))
    state, _ = ticks(p2, engine.start(p2, 0.0).state, FakeJudge(), until=10_000)
    assert state.phase is Phase.SUCCEEDED and state.timeouts == 1
    assert "1 step(s) advanced unproven" in state.reason


def test_timeout_fields_survive_a_restart() -> None:
    p = policy(on_timeout="pause")
    state, _ = ticks(p, engine.start(p, 0.0).state, FakeJudge(lean=True), until=300)
    assert RolloutState.from_dict(state.to_dict()) == state


class FewLabels(FakeJudge):
    """Passes errorRate; accuracy has 40 of its 100 labels."""

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        out = super().evaluate(checks, window, ctx)
        few = {"samples": 40, "enough_data": False, "verdict": Verdict.INCONCLUSIVE}
        return [replace(r, **few) if r.metric == "accuracy" else r for r in out]  # type: ignore[arg-type]


def test_the_promoting_step_says_how_many_labels_it_waits_for_and_how_long() -> None:
    p = policy()
    state = engine.start(p, 0.0).state
    judge = FewLabels(Verdict.PASS)
    # Step 1 advances without its labels (they are needed only before promotion).
    state = engine.tick(p, state, obs(0, 60), 60, judge).state  # type: ignore[arg-type]
    assert state.step_index == 1 and state.reason == ""
    labelled = Observation(
        since=60,
        at=120,
        stable=VersionCounts(requests=100),
        candidate=VersionCounts(requests=100, confusion={("a", "a"): 25.0, ("a", "b"): 5.0}),
    )
    held = engine.tick(p, state, labelled, 120, judge).state  # type: ignore[arg-type]
    assert held.step_index == 1 and held.phase is Phase.PROGRESSING
    # 60 labels to go at the 30 labels / 60 s observed in this step's window.
    assert held.reason == (
        "waiting for labels before promotion: accuracy: 40 of 100 labelled predictions (about 2m at 0.5 labels/s)"
    )
    # Once the labels are in, the wait is no longer announced, and it promotes.
    done = engine.tick(p, held, labelled, 180, FakeJudge(Verdict.PASS)).state  # type: ignore[arg-type]
    assert done.phase is Phase.SUCCEEDED and done.reason == "all checks passed"


def test_on_timeout_promote_never_promotes_without_the_labels() -> None:
    """Label-aware pacing holds under onTimeout promote too: without minLabeled at the
    promoting step's timeout it rolls back (fail closed), saying which labels are missing."""
    p = policy(on_timeout="promote")
    state, _ = ticks(p, engine.start(p, 0.0).state, FewLabels(), until=10_000)
    assert state.phase is Phase.ROLLED_BACK and state.failed_checks == ("stepTimeout",)
    assert state.reason.endswith("not promoted without labels: accuracy (40 of 100 labels)")
    assert state.steps[0].verdict == "advanced"  # the early step did not need them


def test_what_each_kind_of_bound_rules_out_in_words() -> None:
    def words(quantity: str, bound: str, lo: float | None, hi: float | None) -> tuple[str, str]:
        r = CheckResult(
            "c", "m", Verdict.INCONCLUSIVE, "", lower=lo, upper=hi, bound=bound, quantity=quantity
        )
        return r.ruled_out, r.not_ruled_out

    assert words("candidate - stable (error rate)", "<= stable + 0.50%", -0.001, 0.0042) == (
        "a rise larger than 0.42 points",
        "a rise of up to 0.42 points",
    )
    assert words("candidate - stable (accuracy)", ">= stable - 1.00%", -0.021, 0.01) == (
        "a drop larger than 2.1 points",
        "a drop of up to 2.1 points",
    )
    assert words("candidate / stable (p99 latency)", "<= stable x 1.2", 0.9, 1.31) == (
        "a ratio to stable above 1.31x",
        "a ratio to stable up to 1.31x",
    )
    assert words("candidate / stable (p99 latency)", "<= stable x 1.2", 0.04, None) == ("", "any rise")
    assert words("candidate (p99 latency)", "<= 500ms", 100.0, 620.0) == (
        "p99 latency above 620ms",
        "p99 latency as high as 620ms",
    )
    assert words("PSI of the candidate's predictions against stable's", "PSI <= 0.2", 0.0, 0.43) == (
        "PSI above 0.43",
        "PSI as high as 0.43",
    )
    assert words("", "", None, None) == ("", "any effect")
    # Decided checks have nothing "not ruled out": proven, or failed.
    passed = CheckResult("c", "m", Verdict.PASS, "", lower=-0.001, upper=0.003, bound="<= stable + 0.50%",
                         quantity="candidate - stable (error rate)")  # fmt: skip
    assert (
        passed.proven and passed.not_ruled_out == "" and passed.ruled_out == "a rise larger than 0.3 points"
    )
