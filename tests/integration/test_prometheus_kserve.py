"""The kserve query profile against a real Prometheus holding backfilled Knative queue-proxy series.

Knative's queue-proxy, next to every KServe predictor pod, counts the requests its model
server answered (``revision_app_request_count``) and their latency in milliseconds
(``revision_app_request_latencies_bucket``), labelled with ``revision_name``,
``namespace_name`` and the numeric ``response_code``. Same windowing as
test_prometheus_istio.py: samples on both ends of the window, so counts are exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prom_fixtures import DEFAULT_CHECKS, PrometheusServer, backfilled_prometheus, make_policy, openmetrics
from test_prometheus_istio import NOW, PER_WINDOW, SINCE, counter, histogram

from mesh_canary.core.observations import INF
from mesh_canary.metrics.prometheus import PrometheusMetricsSource

pytestmark = pytest.mark.integration

OLD, NEW = "fraud-scorer-predictor-00001", "fraud-scorer-predictor-00002"


def knative(revision: str, code: str, namespace: str = "models") -> dict[str, str]:
    return {
        "revision_name": revision,
        "configuration_name": "fraud-scorer-predictor",
        "service_name": "fraud-scorer-predictor",
        "namespace_name": namespace,
        "pod_name": f"{revision}-deployment-abc",
        "container_name": "queue-proxy",
        "response_code": code,
        "response_code_class": f"{code[0]}xx",
    }


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    series = [
        counter("revision_app_request_count", knative(OLD, "200"), 9),
        counter("revision_app_request_count", knative(OLD, "503"), 1),
        counter("revision_app_request_count", knative(NEW, "200"), 3),
        counter("revision_app_request_count", knative(NEW, "500"), 2),
        counter("revision_app_request_count", knative(NEW, "404"), 1),
        # Not ours: the same revision name in another namespace, the queue-proxy's own count.
        counter("revision_app_request_count", knative(NEW, "500", namespace="staging"), 50),
        counter("revision_request_count", knative(NEW, "200"), 70),
        *histogram(
            "revision_app_request_latencies_bucket", knative(OLD, "200"), {"10": 4, "50": 9, "+Inf": 10}
        ),
        *histogram(
            "revision_app_request_latencies_bucket", knative(NEW, "200"), {"10": 1, "50": 2, "+Inf": 6}
        ),
    ]
    with backfilled_prometheus(openmetrics(series)) as server:
        yield server


def test_kserve_profile_counts_requests_errors_and_latency_per_revision(prometheus: PrometheusServer) -> None:
    policy = make_policy(DEFAULT_CHECKS, stable=OLD, candidate=NEW, profile="kserve")
    src = PrometheusMetricsSource(policy, url=prometheus.url)
    obs = src.read(SINCE, NOW)
    assert obs.problem is None
    assert (obs.stable.requests, obs.stable.errors) == (10 * PER_WINDOW, 1 * PER_WINDOW)
    assert (obs.candidate.requests, obs.candidate.errors) == (6 * PER_WINDOW, 2 * PER_WINDOW)
    assert obs.candidate.latency_ms is not None
    assert obs.candidate.latency_ms.bounds == (10, 50, INF)
    assert obs.candidate.latency_ms.counts == (1 * PER_WINDOW, 2 * PER_WINDOW, 6 * PER_WINDOW)
    assert src.last_read_queries == 2


def test_kserve_profile_with_a_revision_that_has_no_series_is_no_data(prometheus: PrometheusServer) -> None:
    policy = make_policy(
        DEFAULT_CHECKS, stable=OLD, candidate="fraud-scorer-predictor-00003", profile="kserve"
    )
    obs = PrometheusMetricsSource(policy, url=prometheus.url).read(SINCE, NOW)
    assert obs.problem is not None
    assert (
        'no revision_app_request_count series for the candidate (revision_name="fraud-scorer-predictor-00003")'
        in (obs.problem)
    )
