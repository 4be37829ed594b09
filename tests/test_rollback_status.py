"""What a ModelRollout's status says about a pending rollback and an aborted rollout (pure)."""

from __future__ import annotations

from mesh_canary.core import engine
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.kube.status import condition, outcome_word, render_status
from tests.test_engine import ScriptedJudge, make_policy, obs


def test_a_pending_rollback_shows_rolling_back_and_the_rollback_pending_condition() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    rolled = engine.tick(p, state, obs(0, 30, errors=5), 30.0, ScriptedJudge()).state
    pending = engine.rollback_write_failed(rolled, "HTTP 503", 31.0, first=True).state
    status = render_status(None, state=pending, policy=p, generation=1, now=31.0)
    assert status["phase"] == "RollingBack" and "has not gone through" in status["message"]
    assert (condition(status, "RollbackPending") or {})["status"] == "True"
    assert (condition(status, "RolledBack") or {})["status"] == "False"
    assert (condition(status, "Progressing") or {})["reason"] == "RollbackPending"
    assert outcome_word(pending) is None and not status["history"]
    done = engine.rollback_written(pending).state
    after = render_status(status, state=done, policy=p, generation=1, now=33.0)
    assert after["phase"] == "RolledBack"
    assert (condition(after, "RollbackPending") or {})["status"] == "False"
    assert (condition(after, "RolledBack") or {})["status"] == "True"
    assert after["history"][-1]["outcome"] == "rolled_back"  # one spelling (issue 9)


def test_an_aborted_rollout_says_who_moved_the_traffic() -> None:
    p = make_policy()
    state = engine.start(p, 0.0).state
    aborted = engine.moved_outside(state, 40.0, ALL_STABLE, "VirtualService models/fraud-scorer").state
    status = render_status(None, state=aborted, policy=p, generation=1, now=40.0)
    assert status["phase"] == "Aborted"
    cond = condition(status, "Aborted") or {}
    assert cond["status"] == "True" and "outside mesh-canary" in cond["message"]
    assert (condition(status, "Succeeded") or {})["reason"] == "Aborted"
    assert (condition(status, "Progressing") or {})["status"] == "False"
    assert status["history"][-1]["outcome"] == "aborted"
