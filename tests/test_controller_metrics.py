"""The controller's per-rollout metrics on their own: bounded series, removed when gone."""

from __future__ import annotations

import dataclasses

from mesh_canary.controller.metrics import ControllerMetrics, rollback_reasons
from mesh_canary.core import engine
from mesh_canary.core.verdicts import CheckResult, Verdict
from tests.test_engine import make_policy

KEY = ("models", "fraud-scorer")


def series(
    m: ControllerMetrics, rollout: str = "fraud-scorer"
) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in m.registry.collect()
        for s in family.samples
        if s.labels.get("rollout") == rollout
    }


def test_a_check_that_stops_reporting_and_a_forgotten_rollout_leave_no_series() -> None:
    m = ControllerMetrics()
    policy = make_policy()
    state = engine.start(policy, 1000.0).state
    checks = (
        CheckResult("errorRate", "errorRate", Verdict.PASS, "ok", estimate=0.01, lower=0.0, upper=0.02),
        CheckResult("latency", "latency", Verdict.INCONCLUSIVE, "no data"),
    )
    m.show_rollout(KEY, "Progressing", dataclasses.replace(state, checks=checks), policy)
    m.show_rollout(("models", "other"), "Progressing", state, policy)
    names = {n for n, _ in series(m)}
    assert {"mesh_canary_rollout_check_estimate", "mesh_canary_rollout_check_verdict"} <= names
    latency = {s for s in series(m) if ("check", "latency") in s[1]}
    assert {n for n, _ in latency} == {"mesh_canary_rollout_check_verdict"}  # no value: no estimate series

    m.show_rollout(KEY, "Progressing", dataclasses.replace(state, checks=checks[1:]), policy)
    assert not {s for s in series(m) if ("check", "errorRate") in s[1]}

    m.rolled_back(KEY, ("errorRate", "latency"))
    m.analysed(KEY, 0.2)
    assert (
        m.registry.get_sample_value(
            "mesh_canary_rollout_rollbacks_total",
            {"namespace": "models", "rollout": "fraud-scorer", "reason": "latency"},
        )
        == 1.0
    )
    assert m.registry.get_sample_value("mesh_canary_rollbacks_total", {"reason": "checkFailed"}) == 1.0
    m.show_rollout(KEY, "RolledBack", state, policy)  # counters and histograms stay with the rollout
    assert (
        m.registry.get_sample_value(
            "mesh_canary_rollout_analysis_duration_seconds_count",
            {"namespace": "models", "rollout": "fraud-scorer"},
        )
        == 1.0
    )

    m.forget(KEY)
    assert series(m) == set()
    assert series(m, "other")  # another rollout's series are untouched


def test_rollback_reasons_are_failed_check_names_or_one_word() -> None:
    assert rollback_reasons(["errorRate", "latency", "errorRate"]) == ["errorRate", "latency"]
    assert rollback_reasons(["noData"]) == ["noData"]
    assert rollback_reasons(["manual"]) == ["manual"]
    assert rollback_reasons([]) == ["checkFailed"]
