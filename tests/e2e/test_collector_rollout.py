"""A local rollout judged on accuracy from the prediction-label collector: the model servers
have no /feedback and export no model metrics; they send KServe payload-logger CloudEvents to
a real `mesh-canary collector serve` process, the load generator posts the labels to it
later, and a real Prometheus scrapes it. The collector is killed (SIGKILL) and restarted on
its store mid-rollout. A candidate whose accuracy is 5 points worse is rolled back."""

from __future__ import annotations

import threading

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.localmesh.model_server import Degradation
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from mesh_canary.notify import LogNotifier
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import MemoryStateStore
from mesh_canary.run.wiring import local_backend
from tests.waiting import wait_for

POLICY = """
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {name: collector-accuracy}
spec:
  virtualService: {name: local}
  stable: {destination: {host: v1}, version: v1}
  candidate: {destination: {host: v2}, version: v2}
  canary: {steps: [50, 100], minStepDuration: 5s, maxStepDuration: 300s}
  analysis:
    interval: 1s
    # Promote only on proof: with a few hundred labels a 5-point drop is not yet visible,
    # and noRegression would promote on that (it did, once in CI); the drop is proven as
    # labels accumulate.
    promotion: proven
    minRequests: 50
    noDataTimeout: 30s
    checks:
      - {metric: errorRate, maxIncrease: 0.02}
      - {metric: accuracy, maxDecrease: 0.01, minLabeled: 200}
  metrics: {provider: local, profile: envoy}
"""
# Replacing 6% of predictions by a wrong class costs this model about 5 points of accuracy
# (measured through the collector: 83.6% against stable's 88.4%, -4.8 points).
FIVE_POINTS_WORSE = Degradation(accuracy_drop=0.06)


def joined(collector_url: str) -> float:
    text = httpx.get(f"{collector_url}/metrics", timeout=5.0).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "model_feedback_total"
    )


def test_collector_accuracy_rolls_back_a_worse_candidate_across_a_collector_restart() -> None:
    policy = load_policy_text(POLICY, source="test")
    with local_backend(
        policy, False, rps=200.0, metrics_mode="prometheus", labels="collector",
        candidate_degradation=FIVE_POINTS_WORSE,
    ) as (router, metrics, mesh):  # fmt: skip
        assert isinstance(metrics, PrometheusMetricsSource)
        feedback = httpx.post(f"{mesh.model_urls['v1']}/feedback", json={"id": "x", "actual": "legit"})
        assert feedback.status_code == 404, "no /feedback on the model servers"
        runner = RolloutRunner(policy, router, metrics, MemoryStateStore(), LogNotifier(), SystemClock())
        results = []
        # The rollout runs on a thread; the restart is done from this one, which outlives the
        # new collector (a child dies with the thread that started it: children.spawn).
        rollout = threading.Thread(target=lambda: results.append(runner.run(timeout_s=420)), daemon=True)
        rollout.start()
        # Once labels are being joined during the rollout, kill the collector and bring it back.
        wait_for("labels joined", lambda: runner.state is not None and joined(mesh.collector_url) > 1000, 90)
        assert rollout.is_alive(), "the rollout ended before the restart"
        before = joined(mesh.collector_url)
        mesh.restart_collector(kill=True)
        after = joined(mesh.collector_url)
        rollout.join(timeout=480)
        result = results[0]
        assert result.outcome == "rolled_back", result.state.reason
        assert "accuracy" in result.state.failed_checks, result.state.reason
        assert router.get_weights() == ALL_STABLE
        # Every label joined before the kill was still counted after it: no counter went back.
        assert after >= before
