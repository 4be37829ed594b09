"""The controller shares its Prometheus queries between rollouts (one per family per instant).

A real Controller with its default backend (the Istio router against the API stand-in, the
Prometheus metrics source) runs three rollouts reading one real Prometheus; their analyses
fall on the same grid instants, so they share each query, and
``mesh_canary_prometheus_queries_total`` on /metrics counts shared (batched="yes") queries.
"""

from __future__ import annotations

import httpx
import pytest

from mesh_canary.controller import Controller, ControllerSettings
from mesh_canary.localmesh.prometheus import PrometheusServer
from tests.conftest import NS, model_rollout
from tests.integration.test_controller import Cluster, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.integration.test_controller_metrics import value
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

NAMES = ("model-a", "model-b", "model-c")


def test_rollouts_at_the_same_instant_share_one_query_per_family(cluster: Cluster) -> None:
    with PrometheusServer() as prometheus:
        for name in NAMES:
            cluster.add_vs(name)
            cluster.add_rollout(model_rollout(name, prometheus=prometheus.url, analysis={"interval": "2s"}))
        settings = ControllerSettings(
            namespaces=NS, prometheus_url=prometheus.url, metrics_addr="127.0.0.1:0", error_retry_s=0.5
        )
        with running(Controller(cluster.client, settings)) as ctl:
            url = f"http://127.0.0.1:{ctl.metrics_port}/metrics"
            text = wait_for(
                "three shared queries",
                lambda: (
                    (t := httpx.get(url).text)
                    and (
                        value(t, "mesh_canary_prometheus_queries_total", family="traffic", batched="yes") or 0
                    )
                    >= 3
                    and t
                ),
                timeout_s=60,
            )
    # Only the traffic family (errorRate) is read; nothing was counted as latency or custom.
    assert value(text, "mesh_canary_prometheus_queries_total", family="latency", batched="yes") is None
    assert value(text, "mesh_canary_prometheus_queries_total", family="custom", batched="no") is None
