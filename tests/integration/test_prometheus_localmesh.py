"""Live: a real Prometheus scraping the local mesh (Envoy + model servers) under real traffic.

The adapter (profile envoy) must return what the mesh served, as read directly from Envoy
and the model servers by the LocalMetricsSource over the same window. Prometheus's
increase() extrapolates a range to its ends: with the counters flat at both ends of the
window (no traffic there), it returns the true increase scaled by window / (time between
the first and last sample in it), a factor between 1 and W / (W - 2 scrape intervals). So
each count must lie between the truth and the truth times that factor, and ratios (error
rate, traffic share) must match closely.
"""

from __future__ import annotations

import time

import pytest
from prom_fixtures import make_policy, require

from mesh_canary.core.model import Check
from mesh_canary.core.observations import Histogram, Observation
from mesh_canary.core.weights import Weights
from mesh_canary.localmesh.mesh import Degradation, LoadSettings, LocalMesh
from mesh_canary.localmesh.prometheus import prometheus_for
from mesh_canary.metrics.prometheus import PrometheusMetricsSource

pytestmark = pytest.mark.integration

SCRAPE_S = 1.0
CHECKS = (
    Check(metric="errorRate", name="errorRate", max_increase=0.005),
    Check(metric="latency", name="latency", quantile=0.99, max_increase_ratio=0.1),
    Check(metric="accuracy", name="accuracy", max_decrease=0.01),
    Check(metric="predictionDrift", name="predictionDrift", max_psi=0.2),
    Check(metric="featureDrift", name="featureDrift", feature="transaction_amount", max_psi=0.2),
)


def within(measured: float, truth: float, factor: float) -> bool:
    return truth - 1e-6 <= measured <= truth * factor + 1e-6


def histogram_within(measured: Histogram | None, truth: Histogram | None, factor: float) -> bool:
    assert measured is not None and truth is not None
    return measured.bounds == truth.bounds and all(
        within(m, t, factor) for m, t in zip(measured.counts, truth.counts, strict=True)
    )


def test_prometheus_scraping_the_local_mesh_reports_what_the_mesh_served() -> None:
    require("prometheus")
    with (
        LocalMesh(candidate=Degradation(error_rate=0.25), initial=Weights.candidate_at(40)) as mesh,
        prometheus_for(mesh, scrape_interval_s=SCRAPE_S) as prometheus,
    ):
        # Warm up until every series the queries read exists in Prometheus (a counter's
        # first sample is its baseline: what happened before it is not in any increase()).
        mesh.start_load(LoadSettings(rate=40, label_delay_s=0.2), duration_s=1.5).join(15)
        prometheus.wait_for_series('envoy_cluster_upstream_rq_xx{envoy_cluster_name=~"v1|v2"} > 0', count=3)
        prometheus.wait_for_series('sum by (version) (model_feedback_total{version=~"v1|v2"}) > 0', count=2)
        # Envoy's histograms flush each second: two scrapes later the warm-up has settled.
        prometheus.wait_for_scrapes(time.time(), scrapes=2)

        truth_source = mesh.metrics_source()
        since = time.time()
        truth_source.read(since - 1, since)  # the mesh's own counters at the window's start
        prometheus.wait_for_scrapes(since, scrapes=1)  # a flat sample inside the window first
        mesh.start_load(LoadSettings(rate=50, label_delay_s=0.2), duration_s=6).join(20)
        # Flat samples at the end: the last requests flushed by Envoy, scraped, labels in.
        prometheus.wait_for_scrapes(time.time(), scrapes=3)
        now = time.time()
        truth = truth_source.read(since, now)

        source = PrometheusMetricsSource(
            make_policy(CHECKS, profile="envoy"), url=prometheus.url, timeout_s=5
        )
        observed = source.read(since, now)

    assert truth.problem is None and observed.problem is None, (truth.problem, observed.problem)
    window = round(now - since)
    factor = window / (window - 2.2 * SCRAPE_S)
    assert_consistent(observed, truth, factor)
    assert source.last_read_queries == 5  # traffic, latency, confusion, predictions, features


def assert_consistent(observed: Observation, truth: Observation, factor: float) -> None:
    for role in ("stable", "candidate"):
        got, want = getattr(observed, role), getattr(truth, role)
        assert want.requests > 50, f"too little traffic reached the {role} to compare"
        assert within(got.requests, want.requests, factor), (role, got.requests, want.requests)
        assert within(got.errors, want.errors, factor), (role, got.errors, want.errors)
        assert histogram_within(got.latency_ms, want.latency_ms, factor), (
            role,
            got.latency_ms,
            want.latency_ms,
        )
        assert {k for k, v in got.confusion.items() if v} == {k for k, v in want.confusion.items() if v}
        for key, count in want.confusion.items():
            assert within(got.confusion.get(key, 0.0), count, factor), (role, key)
        assert {k for k, v in got.predictions.items() if v} == {k for k, v in want.predictions.items() if v}
        for cls, count in want.predictions.items():
            assert within(got.predictions.get(cls, 0.0), count, factor), (role, cls)
        assert set(got.features) == {"transaction_amount"}
        assert histogram_within(
            got.features["transaction_amount"], want.features["transaction_amount"], factor
        )

    # What the judge looks at: rates and shares, where the extrapolation factor cancels.
    assert observed.stable.errors == 0
    assert (
        abs(
            observed.candidate.errors / observed.candidate.requests
            - truth.candidate.errors / truth.candidate.requests
        )
        < 0.03
    )
    share = observed.candidate.requests / (observed.candidate.requests + observed.stable.requests)
    true_share = truth.candidate.requests / (truth.candidate.requests + truth.stable.requests)
    assert abs(share - true_share) < 0.03
    assert (
        abs(
            observed.candidate.correct / observed.candidate.labeled
            - truth.candidate.correct / truth.candidate.labeled
        )
        < 0.03
    )
