"""A full local rollout decided from a real Prometheus scraping real Envoy and model servers."""

from __future__ import annotations

import pytest

from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from mesh_canary.notify import LogNotifier
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.demo import demo_policy
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import MemoryStateStore
from mesh_canary.run.wiring import local_backend


@pytest.mark.parametrize(("degraded", "outcome"), [(False, "promoted"), (True, "rolled_back")])
def test_rollout_decided_from_prometheus(degraded: bool, outcome: str) -> None:
    policy = demo_policy()
    with local_backend(policy, degraded, rps=100.0, metrics_mode="prometheus") as (router, metrics, mesh):
        assert isinstance(metrics, PrometheusMetricsSource)
        runner = RolloutRunner(policy, router, metrics, MemoryStateStore(), LogNotifier(), SystemClock())
        result = runner.run(timeout_s=150)
        assert result.outcome == outcome, result.state.reason
        assert metrics.queries_per_read == 4  # one per check family, both versions in each
        if degraded:
            SystemClock().sleep(0.5)  # requests in flight at the switch may still land
            before = mesh.requests_served(policy.candidate.metrics_version)  # type: ignore[attr-defined]
            SystemClock().sleep(2.0)
            assert mesh.requests_served(policy.candidate.metrics_version) == before  # type: ignore[attr-defined]
