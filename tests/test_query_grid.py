"""Analyses on a grid of the interval, and the pure parts of shared Prometheus queries."""

from __future__ import annotations

import dataclasses

import pytest

from mesh_canary.controller.handler import analysis_instant, due_at, next_due
from mesh_canary.core import engine
from mesh_canary.metrics import promql
from mesh_canary.metrics.coalesce import QueryCoalescer, grid_ceil, grid_floor, on_grid
from tests.integration.prom_fixtures import DEFAULT_CHECKS, make_policy


def policy(interval_s: float = 10.0, **kwargs: object) -> engine.Policy:
    p = make_policy(DEFAULT_CHECKS, **kwargs)  # type: ignore[arg-type]
    return dataclasses.replace(p, analysis=dataclasses.replace(p.analysis, interval_s=interval_s))


def test_the_first_analysis_moves_to_the_next_grid_instant_and_then_stays_on_it() -> None:
    p = policy()
    state = engine.start(p, 1003.7).state
    assert state.next_tick_at(p) == pytest.approx(1013.7)
    assert due_at(state, p) == 1020.0  # never sooner than the engine asks, at most one interval later
    on = dataclasses.replace(state, last_tick_at=1020.0)
    assert due_at(on, p) == 1030.0
    # A pending rollback's retry is never moved.
    pending = dataclasses.replace(state, rollback_pending=True, retry_at=1004.2)
    assert due_at(pending, p) == 1004.2


def test_a_due_analysis_reads_at_its_grid_instant_never_after_now() -> None:
    assert analysis_instant(1020.4, 1020.0, 10.0) == 1020.0  # a little late: still its instant
    # Up to an interval late: still the instant it announced (its shared queries).
    assert analysis_instant(1030.0, 1020.0, 10.0) == 1020.0
    # More than an interval late: the last grid instant, never staler data than that.
    assert analysis_instant(1033.0, 1020.0, 10.0) == 1030.0
    assert analysis_instant(1083.0, 1020.0, 10.0) == 1080.0
    assert analysis_instant(1020.4, 1004.2, 10.0) is None  # due off the grid: read now


def test_after_a_late_analysis_the_next_is_due_at_the_next_instant_not_one_by_one() -> None:
    p = policy()
    state = dataclasses.replace(engine.start(p, 1003.7).state, last_tick_at=1020.0)
    assert next_due(state, p, 1024.0) == 1030.0  # on time: the engine's due instant
    assert next_due(state, p, 1047.5) == 1050.0  # read 1020 at 1047.5: next at 1050, not 1030 and 1040
    # A pending rollback's retry is never moved.
    pending = dataclasses.replace(state, rollback_pending=True, retry_at=1030.5)
    assert next_due(pending, p, 1047.5) == 1030.5


def test_grid_arithmetic() -> None:
    assert grid_floor(1019.999, 10) == 1010 and grid_floor(1020, 10) == 1020
    assert grid_ceil(1010.001, 10) == 1020 and grid_ceil(1020, 10) == 1020
    assert on_grid(0.1 * 3, 0.1) and not on_grid(1020.5, 10)


def batch_of(p: engine.Policy, family: str) -> promql.BatchSpec:
    spec = next(q.batch for q in promql.plan_queries(p, "300s") if q.family == family)
    assert spec is not None
    return spec


def test_the_shared_query_escapes_every_rollouts_values_and_groups_by_their_service() -> None:
    a = batch_of(policy(host="fraud-scorer", namespace="models"), "traffic")
    b = batch_of(policy(host='x"}|+*', namespace="team-b", stable="a|b", candidate="v2"), "traffic")
    text = promql.render_batch([a, b])
    assert text == (
        "sum by (destination_service_name, destination_service_namespace, destination_version, response_code) "
        '(increase(istio_requests_total{reporter="destination",'
        'destination_service_name=~"fraud-scorer|x\\"\\\\}\\\\|\\\\+\\\\*",'
        'destination_service_namespace=~"models|team-b",'
        'destination_version=~"a\\\\|b|v1|v2"}[300s]))'
    )
    with pytest.raises(promql.PromQLError):
        promql.render_batch([a, batch_of(policy(), "latency")])


def test_a_rollout_takes_only_its_own_groups_with_its_own_labels() -> None:
    spec = batch_of(policy(host="fraud-scorer", namespace="models"), "traffic")

    def sample(service: str, namespace: str, version: str, value: str) -> dict[str, object]:
        labels = {
            "destination_service_name": service,
            "destination_service_namespace": namespace,
            "destination_version": version,
            "response_code": "200",
        }
        return {"metric": labels, "value": [1.0, value]}

    answer = [
        sample("fraud-scorer", "team-b", "v1", "50"),  # selected by the union, nobody's
        sample("fraud-scorer", "models", "v2", "2"),
        sample("churn", "models", "v1", "9"),
        sample("fraud-scorer", "models", "v1", "1"),
    ]
    index = promql.index_batch(spec, "vector", answer)
    assert index is not None
    assert promql.split_batch(index, spec) == [
        {"metric": {"destination_version": "v2", "response_code": "200"}, "value": [1.0, "2"]},
        {"metric": {"destination_version": "v1", "response_code": "200"}, "value": [1.0, "1"]},
    ]
    assert promql.index_batch(spec, "matrix", []) is None


def test_two_hosts_and_custom_checks_are_never_shared() -> None:
    two_hosts = policy(host="a", candidate_host="b")
    assert all(q.batch is None for q in promql.plan_queries(two_hosts, "300s"))


def test_the_coalescer_shares_only_with_rollouts_announced_at_that_instant() -> None:
    spec = batch_of(policy(), "traffic")
    sent: list[str] = []

    def send(text: str, deadline: float) -> tuple[str, object]:
        sent.append(text)
        return "vector", []

    c = QueryCoalescer()
    assert c.take(1, "http://p", 1020.0, spec, 1e18, send) is None  # nobody announced: its own query
    c.expect(1, "http://p", 1020.0, [spec])
    assert c.take(1, "http://p", 1020.0, spec, 1e18, send) is None  # alone: its own query too
    c.expect(1, "http://p", 1030.0, [spec])
    c.expect(2, "http://p", 1030.0, [spec])
    assert c.take(3, "http://p", 1030.0, spec, 1e18, send) is None  # not announced there
    assert c.take(1, "http://p", 1030.0, spec, 1e18, send) == []
    assert c.take(2, "http://p", 1030.0, spec, 1e18, send) == []
    assert len(sent) == 1

    def fail(text: str, deadline: float) -> tuple[str, object]:
        raise RuntimeError("refused")

    c.expect(1, "http://p", 1040.0, [spec])
    c.expect(2, "http://p", 1040.0, [spec])
    assert c.take(1, "http://p", 1040.0, spec, 1e18, fail) is None  # failed: each sends its own
    assert c.take(2, "http://p", 1040.0, spec, 1e18, fail) is None
