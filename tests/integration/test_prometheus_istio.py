"""The Prometheus MetricsSource against a real Prometheus holding backfilled, known series.

Samples every 15 s from T0 to T0+600 s; every read asks for [T0+300, T0+600]. Samples sit
exactly on both ends of the window, so Prometheus's increase() does not extrapolate and
the expected counts are exact: a counter growing by ``k`` per sample grows by ``20 * k``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import httpx
import pytest
from prom_fixtures import (
    DEFAULT_CHECKS,
    PrometheusServer,
    Series,
    backfilled_prometheus,
    make_policy,
    openmetrics,
)

from mesh_canary.core.model import Check
from mesh_canary.core.observations import INF
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from mesh_canary.metrics.promql import plan_queries, render_custom

pytestmark = pytest.mark.integration

T0 = 1_700_000_000
SINCE, NOW = T0 + 300, T0 + 600
STEPS = 40  # samples at T0 + 15 s * k, k = 0..40
PER_WINDOW = 20  # samples steps inside [SINCE, NOW]

ISTIO = {
    "reporter": "destination",
    "destination_service_name": "fraud-scorer",
    "destination_service_namespace": "models",
    "destination_service": "fraud-scorer.models.svc.cluster.local",
}
HOSTILE_STABLE, HOSTILE_CANDIDATE = 'v1"} or vector(1) #', ".*"
NEWLINE_BRACES, PIPE = "x\ny{}", "a|b"


def counter(name: str, labels: Mapping[str, str], per_step: float, reset_at: int | None = None) -> Series:
    """A counter growing by ``per_step`` per sample; its process restarts after sample ``reset_at``."""
    samples = []
    for k in range(STEPS + 1):
        value = per_step * k if reset_at is None or k <= reset_at else per_step * (k - reset_at)
        samples.append((T0 + 15 * k, value))
    return (name, dict(labels), samples)


def histogram(name: str, labels: Mapping[str, str], per_step: Mapping[str, float]) -> list[Series]:
    return [counter(name, {**labels, "le": le}, n) for le, n in per_step.items()]


def istio(version: str, code: str, **extra: str) -> dict[str, str]:
    return {**ISTIO, "destination_version": version, "response_code": code, **extra}


LAT_V1 = {"5": 2, "10": 5, "25": 8, "50": 10, "100": 11, "250": 11, "+Inf": 11}
LAT_V2 = {"5": 1, "10": 2, "25": 2, "50": 3, "100": 3, "250": 4, "+Inf": 4}


def series() -> list[Series]:
    return [
        counter("istio_requests_total", istio("v1", "200"), 10),
        counter("istio_requests_total", istio("v1", "503"), 1),
        counter("istio_requests_total", istio("v1", "404"), 2),
        counter("istio_requests_total", istio("v2", "200"), 3, reset_at=30),  # a restart mid-window
        counter("istio_requests_total", istio("v2", "500"), 1),
        # Not ours: the client side's report, another service, another namespace, another version.
        counter("istio_requests_total", {**istio("v1", "200"), "reporter": "source"}, 100),
        counter("istio_requests_total", istio("v2", "500", destination_service_name="other"), 50),
        counter("istio_requests_total", istio("v2", "500", destination_service_namespace="staging"), 50),
        counter("istio_requests_total", istio("v3", "200"), 50),
        # Hostile version names.
        counter("istio_requests_total", istio(HOSTILE_STABLE, "200"), 7),
        counter("istio_requests_total", istio(HOSTILE_CANDIDATE, "200"), 1),
        counter("istio_requests_total", istio(NEWLINE_BRACES, "200"), 2),
        counter("istio_requests_total", istio(PIPE, "200"), 3),
        *histogram("istio_request_duration_milliseconds_bucket", istio("v1", "200"), LAT_V1),
        *histogram("istio_request_duration_milliseconds_bucket", istio("v2", "200"), LAT_V2),
        *histogram(
            "istio_request_duration_milliseconds_bucket",
            {**istio("v2", "200"), "reporter": "source"},
            {"5": 100, "+Inf": 100},
        ),
        # Model metrics convention.
        counter("model_feedback_total", {"version": "v1", "predicted": "fraud", "actual": "fraud"}, 1),
        counter("model_feedback_total", {"version": "v1", "predicted": "legit", "actual": "legit"}, 5),
        counter("model_feedback_total", {"version": "v1", "predicted": "fraud", "actual": "legit"}, 1),
        counter("model_feedback_total", {"version": "v1", "predicted": "legit", "actual": "fraud"}, 0),
        counter("model_feedback_total", {"version": "v2", "predicted": "fraud", "actual": "fraud"}, 1),
        counter("model_feedback_total", {"version": "v2", "predicted": "legit", "actual": "legit"}, 3),
        counter("model_feedback_total", {"version": "v2", "predicted": "legit", "actual": "fraud"}, 2),
        counter("model_feedback_total", {"version": "v3", "predicted": "fraud", "actual": "fraud"}, 9),
        counter("model_predictions_total", {"version": "v1", "class": "fraud"}, 2),
        counter("model_predictions_total", {"version": "v1", "class": "legit"}, 8),
        counter("model_predictions_total", {"version": "v2", "class": "fraud"}, 1),
        counter("model_predictions_total", {"version": "v2", "class": "legit"}, 4),
        *histogram(
            "model_feature_value_bucket",
            {"version": "v1", "feature": "amount"},
            {"-1": 1, "0": 3, "1": 5, "+Inf": 6},
        ),
        *histogram(
            "model_feature_value_bucket",
            {"version": "v2", "feature": "amount"},
            {"-1": 0, "0": 1, "1": 4, "+Inf": 6},
        ),
        *histogram("model_feature_value_bucket", {"version": "v1", "feature": "age"}, {"0": 2, "+Inf": 6}),
        *histogram("model_feature_value_bucket", {"version": "v2", "feature": "age"}, {"0": 2, "+Inf": 6}),
        *histogram("model_feature_value_bucket", {"version": "v2", "feature": "zip"}, {"0": 9, "+Inf": 9}),
        counter("checkout_total", {"version": "v1"}, 4),
        counter("checkout_total", {"version": "v2"}, 2),
        # Vanilla Envoy's per-cluster stats, clusters named after the versions.
        counter("envoy_cluster_upstream_rq_total", {"envoy_cluster_name": "v1"}, 7),  # not read
        counter(
            "envoy_cluster_upstream_rq_xx",
            {"envoy_cluster_name": "other", "envoy_response_code_class": "5"},
            40,
        ),
        counter(
            "envoy_cluster_upstream_rq_xx", {"envoy_cluster_name": "v1", "envoy_response_code_class": "2"}, 9
        ),
        counter(
            "envoy_cluster_upstream_rq_xx", {"envoy_cluster_name": "v1", "envoy_response_code_class": "5"}, 1
        ),
        counter(
            "envoy_cluster_upstream_rq_xx", {"envoy_cluster_name": "v2", "envoy_response_code_class": "2"}, 2
        ),
        counter(
            "envoy_cluster_upstream_rq_xx", {"envoy_cluster_name": "v2", "envoy_response_code_class": "5"}, 2
        ),
        *histogram(
            "envoy_cluster_upstream_rq_time_bucket",
            {"envoy_cluster_name": "v1"},
            {"1": 3, "25": 9, "+Inf": 10},
        ),
        *histogram(
            "envoy_cluster_upstream_rq_time_bucket",
            {"envoy_cluster_name": "v2"},
            {"1": 0, "25": 1, "+Inf": 4},
        ),
    ]


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    with backfilled_prometheus(openmetrics(series())) as server:
        yield server


def source(
    server: PrometheusServer, checks: Sequence[Check] = DEFAULT_CHECKS, **kw: object
) -> PrometheusMetricsSource:
    return PrometheusMetricsSource(make_policy(checks, **kw), url=server.url)


def times(per_step: Mapping[str, float]) -> tuple[float, ...]:
    return tuple(PER_WINDOW * n for n in per_step.values())


def test_istio_default_checks_give_exact_counts_errors_and_buckets_per_version(
    prometheus: PrometheusServer,
) -> None:
    src = source(prometheus)
    obs = src.read(SINCE, NOW)
    assert obs.problem is None
    assert (obs.since, obs.at) == (SINCE, NOW)
    # v1: 200s + 503s + 404s; only the 503s are errors. Not counted: reporter=source,
    # other services/namespaces, v3.
    assert (obs.stable.requests, obs.stable.errors) == (20 * (10 + 1 + 2), 20 * 1)
    # v2 restarted mid-window (counter reset): increase() still counts every request.
    assert (obs.candidate.requests, obs.candidate.errors) == (20 * (3 + 1), 20 * 1)
    assert obs.stable.latency_ms is not None and obs.candidate.latency_ms is not None
    assert obs.stable.latency_ms.bounds == (5, 10, 25, 50, 100, 250, INF)
    assert obs.stable.latency_ms.counts == times(LAT_V1)
    assert obs.candidate.latency_ms.counts == times(LAT_V2)
    # Only what the checks need, and one query per family.
    assert obs.stable.confusion == {} and obs.stable.custom == {}
    assert src.queries_per_read == src.last_read_queries == 2


def test_model_convention_and_custom_checks(prometheus: PrometheusServer) -> None:
    checks = [
        Check(metric="accuracy", name="accuracy", max_decrease=0.01),
        Check(metric="predictionDrift", name="predictionDrift", max_psi=0.2),
        Check(metric="featureDrift", name="featureDrift-amount", feature="amount", max_psi=0.2),
        Check(metric="featureDrift", name="featureDrift-age", feature="age", max_psi=0.2),
        Check(
            metric="custom",
            name="conversion",
            query='sum(increase(checkout_total{version="{{ version }}"}[{{ window }}])) '
            '/ sum(increase(model_predictions_total{version="{{ version }}"}[{{ window }}]))',
            min=0.02,
        ),
        Check(
            metric="custom",
            name="checkouts",
            query='sum by (version) (increase(checkout_total{shop=~"{{ shop }}|"}[{{ window }}]))',
            min=1,
        ),
    ]
    src = source(prometheus, checks, variables={"shop": "eu"})
    obs = src.read(SINCE, NOW)
    assert obs.problem is None
    assert obs.stable.confusion == {
        ("fraud", "fraud"): 20.0,
        ("legit", "legit"): 100.0,
        ("fraud", "legit"): 20.0,
        ("legit", "fraud"): 0.0,
    }
    assert obs.candidate.confusion == {
        ("fraud", "fraud"): 20.0,
        ("legit", "legit"): 60.0,
        ("legit", "fraud"): 40.0,
    }
    assert (obs.stable.correct, obs.stable.labeled) == (120.0, 140.0)
    assert obs.stable.predictions == {"fraud": 40.0, "legit": 160.0}
    assert obs.candidate.predictions == {"fraud": 20.0, "legit": 80.0}
    assert set(obs.stable.features) == {"amount", "age"}  # not "zip": no check reads it
    amount = obs.candidate.features["amount"]
    assert (amount.bounds, amount.counts) == ((-1, 0, 1, INF), (0, 20, 80, 120))
    assert obs.stable.features["age"].counts == (40, 120)
    assert obs.stable.custom == {"conversion": 80 / 200, "checkouts": 80}
    assert obs.candidate.custom == {"conversion": 40 / 100, "checkouts": 40}
    assert obs.stable.requests == 0 and obs.stable.latency_ms is None  # no traffic checks
    # confusion + predictions + features + 2 (per-version custom) + 1 (custom without version)
    assert src.queries_per_read == src.last_read_queries == 6


def test_envoy_profile_reads_per_cluster_stats(prometheus: PrometheusServer) -> None:
    src = source(prometheus, profile="envoy")
    obs = src.read(SINCE, NOW)
    assert obs.problem is None
    assert (obs.stable.requests, obs.stable.errors) == (200, 20)
    assert (obs.candidate.requests, obs.candidate.errors) == (80, 40)
    assert obs.candidate.latency_ms is not None
    assert (obs.candidate.latency_ms.bounds, obs.candidate.latency_ms.counts) == ((1, 25, INF), (0, 20, 80))
    assert src.last_read_queries == 2


def test_window_is_now_minus_since_evaluated_at_now(prometheus: PrometheusServer) -> None:
    # Half the window: half the counts (samples still on both ends).
    obs = source(prometheus).read(T0 + 450, T0 + 600)
    assert (obs.stable.requests, obs.stable.errors) == (10 * 13, 10)
    # The same length earlier in time.
    obs = source(prometheus).read(T0, T0 + 150)
    assert obs.stable.requests == 10 * 13
    # 299.7 s round to a 300s range ending at now.
    obs = source(prometheus).read(SINCE + 0.3, NOW)
    assert obs.stable.requests == 20 * 13


@pytest.mark.parametrize(
    ("stable", "candidate", "expected"),
    [
        (HOSTILE_STABLE, HOSTILE_CANDIDATE, (20 * 7, 20 * 1)),
        (NEWLINE_BRACES, PIPE, (20 * 2, 20 * 3)),
    ],
)
def test_hostile_version_names_match_only_their_own_series(
    prometheus: PrometheusServer, stable: str, candidate: str, expected: tuple[int, int]
) -> None:
    src = source(prometheus, [DEFAULT_CHECKS[0]], stable=stable, candidate=candidate)
    obs = src.read(SINCE, NOW)
    assert obs.problem is None
    # An injected `or vector(1)` or an unescaped `.*`/`a|b` would add other series' counts.
    assert (obs.stable.requests, obs.candidate.requests) == expected


def skeleton(query: str) -> str:
    """The query with every string literal blanked: its structure."""
    return re.sub(r"\s+", "", re.sub(r'"(?:[^"\\]|\\.)*"', "S", query))


def formatted(server: PrometheusServer, query: str) -> str:
    """Prometheus's own parse of ``query``, printed back (fails on a syntax error)."""
    answer = httpx.get(f"{server.url}/api/v1/format_query", params={"query": query}).json()
    assert answer["status"] == "success", answer
    return str(answer["data"])


@pytest.mark.parametrize(
    "hostile", [HOSTILE_STABLE, HOSTILE_CANDIDATE, NEWLINE_BRACES, PIPE, '\\"}) or up{x="']
)
def test_prometheus_parses_hostile_renderings_to_the_same_structure(
    prometheus: PrometheusServer, hostile: str
) -> None:
    checks = [*DEFAULT_CHECKS, Check(metric="accuracy", name="accuracy", max_decrease=0.01)]
    benign = plan_queries(make_policy(checks, stable="safe"), "300s")
    evil = plan_queries(make_policy(checks, stable=hostile), "300s")
    for b, e in zip(benign, evil, strict=True):
        assert skeleton(formatted(prometheus, e.promql)) == skeleton(formatted(prometheus, b.promql))
    template = 'sum(rate(checkout_total{version="{{ version }}",shop=~"{{ shop }}"}[{{ window }}]))'
    assert skeleton(
        formatted(prometheus, render_custom(template, hostile, "60s", {"shop": hostile}))
    ) == skeleton(formatted(prometheus, render_custom(template, "safe", "60s", {"shop": "safe"})))
