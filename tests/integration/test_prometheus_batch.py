"""Shared (batched) queries give every rollout exactly the Observation its own queries give.

A real Prometheus holds backfilled series for many services; each rollout reads them once
through its own queries and once through a `QueryCoalescer` shared with the others (one
query per family shape, split per rollout). The Observations must be equal, field for field,
float for float: different services, namespaces, version labels, profiles and families, a
rollout with no series at all, one with a version missing, NaN, counter resets and samples
off the window's ends (so increase() extrapolates to non-integer counts).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
from prom_fixtures import PrometheusServer, Series, backfilled_prometheus, make_policy, openmetrics

from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Observation
from mesh_canary.metrics.coalesce import QueryCoalescer
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from tests.faults.test_runner import http_server

pytestmark = pytest.mark.integration

T0 = 1_700_000_400  # a multiple of the 60 s analysis interval: SINCE and NOW are grid instants
SINCE, NOW = T0 + 300, T0 + 600
INTERVAL_S = 60.0

ERRORS_LATENCY = (
    Check(metric="errorRate", name="errorRate", max_increase=0.005),
    Check(metric="latency", name="latency", quantile=0.99, max_increase_ratio=0.1),
)
MODEL = (
    Check(metric="accuracy", name="accuracy", max_decrease=0.01),
    Check(metric="predictionDrift", name="predictionDrift", max_psi=0.2),
)
CUSTOM = Check(
    metric="custom",
    name="checkout",
    query='sum(increase(checkout_total{version="{{ version }}"}[{{ window }}]))',
    min=0.0,
)


def counter(
    name: str, labels: Mapping[str, str], per_step: float, every_s: int = 15, reset_at: int | None = None
) -> Series:
    """A counter growing by ``per_step`` every ``every_s`` seconds from T0 (restarting after
    sample ``reset_at``); with ``every_s`` not dividing 300 the window's ends fall between samples."""
    samples = []
    for k in range(600 // every_s + 1):
        value = per_step * k if reset_at is None or k <= reset_at else per_step * (k - reset_at)
        samples.append((T0 + every_s * k, value))
    return (name, dict(labels), samples)


def with_nan(series: Series, at_s: int) -> Series:
    name, labels, samples = series
    return (name, labels, [(t, float("nan") if t == T0 + at_s else v) for t, v in samples])


def istio(
    service: str, namespace: str, version: str, code: str = "200", label: str = "destination_version"
) -> dict[str, str]:
    return {
        "reporter": "destination",
        "destination_service_name": service,
        "destination_service_namespace": namespace,
        "destination_service": f"{service}.{namespace}.svc.cluster.local",
        label: version,
        "response_code": code,
    }


def requests_and_latency(
    service: str, namespace: str, version: str, scale: float, every_s: int = 15
) -> list[Series]:
    out = [
        counter("istio_requests_total", istio(service, namespace, version), 10 * scale, every_s),
        counter("istio_requests_total", istio(service, namespace, version, "503"), 0.7 * scale, every_s),
    ]
    for le, n in (("10", 2.0), ("50", 5.5), ("250", 9.25), ("+Inf", 10.0)):
        labels = {**istio(service, namespace, version), "le": le}
        out.append(counter("istio_request_duration_milliseconds_bucket", labels, n * scale, every_s))
    return out


def series() -> list[Series]:
    out: list[Series] = []
    out += requests_and_latency("svc-a", "models", "v1", 1.0)
    out += requests_and_latency("svc-a", "models", "v2", 0.3, every_s=7)  # extrapolated, not whole
    out += requests_and_latency("svc-b", "team-b", "v3", 2.0, every_s=11)
    out += requests_and_latency("svc-b", "team-b", "v4", 1.0)
    out[-1] = with_nan(out[-1], 600)  # svc-b v4's +Inf bucket ends the window on a NaN
    # svc-d: the candidate has no series; the stable one restarts mid-window.
    out.append(counter("istio_requests_total", istio("svc-d", "models", "v1"), 4.0, reset_at=30))
    out += requests_and_latency("svc-d", "models", "v1", 1.5)[2:]
    # Selected by the batch's union of names and namespaces, but nobody's: svc-a in team-b.
    out += requests_and_latency("svc-a", "team-b", "v1", 50.0)
    out += requests_and_latency("svc-a", "team-b", "v3", 50.0)
    # svc-e uses another version label ("version"): a batch of its own shape.
    out += requests_and_latency("svc-e", "models", "v1", 1.0)
    out.append(counter("istio_requests_total", istio("svc-e", "models", "e1", label="version"), 3.0, 13))
    out.append(counter("istio_requests_total", istio("svc-e", "models", "e2", label="version"), 2.0, 13))
    # Two hosts: stable and candidate are different Services (kept per rollout).
    out += requests_and_latency("svc-f", "models", "v1", 1.0)
    out += requests_and_latency("svc-f-next", "models", "v2", 1.0)
    # Envoy's per-cluster stats, clusters named after the versions.
    for cluster, n in (("a-stable", 9.0), ("a-canary", 3.0), ("b-stable", 5.0), ("b-canary", 1.0)):
        for cls, share in (("2", 0.9), ("5", 0.1)):
            labels = {"envoy_cluster_name": cluster, "envoy_response_code_class": cls}
            out.append(counter("envoy_cluster_upstream_rq_xx", labels, n * share, 9))
    # KServe revisions in two namespaces.
    for namespace, revision, n in (("models", "r-1", 9.0), ("models", "r-2", 3.0), ("team-b", "r-1", 4.0)):
        for code in ("200", "500"):
            labels = {"revision_name": revision, "namespace_name": namespace, "response_code": code}
            out.append(counter("revision_app_request_count", labels, n if code == "200" else 1.0))
    # Model metrics: two models' versions.
    for version, scale in (("m1", 1.0), ("m2", 0.8), ("m3", 2.0), ("m4", 1.1)):
        for predicted, actual, n in (
            ("fraud", "fraud", 1.0),
            ("legit", "legit", 5.0),
            ("fraud", "legit", 0.3),
        ):
            labels = {"version": version, "predicted": predicted, "actual": actual}
            out.append(counter("model_feedback_total", labels, n * scale, 7))
        for cls, n in (("fraud", 2.0), ("legit", 8.0)):
            out.append(counter("model_predictions_total", {"version": version, "class": cls}, n * scale))
        for feature in ("amount", "age"):
            for le, n in (("0", 1.0), ("1", 3.0), ("+Inf", 4.0)):
                labels = {"version": version, "feature": feature, "le": le}
                out.append(counter("model_feature_value_bucket", labels, n * scale, 11))
    out.append(counter("checkout_total", {"version": "v1"}, 4.0))
    out.append(counter("checkout_total", {"version": "v2"}, 2.0))
    return out


def drift(feature: str) -> Check:
    return Check(metric="featureDrift", name=f"featureDrift-{feature}", feature=feature, max_psi=0.2)


def policy(checks: tuple[Check, ...], **kwargs: object) -> Policy:
    p = make_policy(checks, **kwargs)  # type: ignore[arg-type]
    return replace(p, analysis=replace(p.analysis, interval_s=INTERVAL_S))


def rollouts() -> dict[str, Policy]:
    return {
        "a": policy(ERRORS_LATENCY, host="svc-a", namespace="models"),
        "b": policy(ERRORS_LATENCY, stable="v3", candidate="v4", host="svc-b.team-b", namespace="models"),
        "c-no-series": policy(ERRORS_LATENCY, host="svc-c", namespace="models"),
        "d-no-candidate": policy(ERRORS_LATENCY, host="svc-d", namespace="models"),
        "e-version-label": policy(
            ERRORS_LATENCY, stable="e1", candidate="e2", host="svc-e", version_label="version"
        ),
        "f-two-hosts": policy(ERRORS_LATENCY, host="svc-f", candidate_host="svc-f-next"),
        "g-envoy": policy(ERRORS_LATENCY[:1], stable="a-stable", candidate="a-canary", profile="envoy"),
        "h-envoy": policy(ERRORS_LATENCY[:1], stable="b-stable", candidate="b-canary", profile="envoy"),
        "i-kserve": policy(ERRORS_LATENCY[:1], stable="r-1", candidate="r-2", profile="kserve"),
        "j-kserve": policy(
            ERRORS_LATENCY[:1], stable="r-1", candidate="r-2", profile="kserve", namespace="team-b"
        ),
        "k-model": policy((*MODEL, drift("amount")), stable="m1", candidate="m2", host="svc-a"),
        "l-model": policy((*MODEL, drift("age")), stable="m3", candidate="m4", host="svc-b"),
        "m-custom": policy((*ERRORS_LATENCY, CUSTOM), host="svc-a", namespace="models"),
    }


@dataclass
class Counted:
    calls: list[tuple[str, bool]]
    lock: threading.Lock

    def __call__(self, family: str, batched: bool) -> None:
        with self.lock:
            self.calls.append((family, batched))


@pytest.fixture(scope="module")
def prometheus() -> Iterator[PrometheusServer]:
    with backfilled_prometheus(openmetrics(series())) as server:
        yield server


def own_observations(url: str, policies: Mapping[str, Policy]) -> dict[str, Observation]:
    out = {}
    for name, p in policies.items():
        source = PrometheusMetricsSource(p, url=url)
        try:
            out[name] = source.read(SINCE, NOW)
        finally:
            source.close()
    return out


def shared_observations(
    url: str, policies: Mapping[str, Policy], parallel: bool
) -> tuple[dict[str, Observation], Counted]:
    counted = Counted([], threading.Lock())
    coalescer = QueryCoalescer(count=counted)
    sources = {name: PrometheusMetricsSource(p, url=url, coalescer=coalescer) for name, p in policies.items()}
    out: dict[str, Observation] = {}
    try:
        for source in sources.values():
            source.expect(SINCE, NOW)
        if parallel:
            threads = [
                threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read(SINCE, NOW)))
                for n, s in sources.items()
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        else:
            out = {name: s.read(SINCE, NOW) for name, s in sources.items()}
    finally:
        for s in sources.values():
            s.close()
    return out, counted


@pytest.mark.parametrize("parallel", [False, True], ids=["one-after-another", "all-at-once"])
def test_shared_queries_give_every_rollout_its_own_observation(
    prometheus: PrometheusServer, parallel: bool
) -> None:
    policies = rollouts()
    own = own_observations(prometheus.url, policies)
    shared, counted = shared_observations(prometheus.url, policies, parallel)

    assert set(shared) == set(policies)
    for name in policies:
        assert shared[name] == own[name], name

    # Not vacuous: the data is there where it should be, and missing where it should be.
    assert own["a"].problem is None and own["a"].stable.requests > 0 and own["a"].candidate.requests > 0
    assert own["a"].candidate.requests != round(own["a"].candidate.requests)  # extrapolated
    assert own["b"].problem is not None and "NaN" in own["b"].problem
    assert own["c-no-series"].problem is not None and "for either version" in own["c-no-series"].problem
    assert own["d-no-candidate"].problem is not None and "for the candidate" in own["d-no-candidate"].problem
    assert own["e-version-label"].candidate.requests > 0
    assert own["i-kserve"].stable.requests != own["j-kserve"].stable.requests  # namespaces kept apart
    assert own["k-model"].candidate.features.keys() == {"amount"}
    assert own["l-model"].candidate.features.keys() == {"age"}
    assert own["m-custom"].candidate.custom["checkout"] > 0

    # One query per family shape for the batchable reads, each rollout's own for the rest:
    # istio traffic and latency (a, b, c, d, m), traffic and latency with "version" (e alone:
    # own), envoy traffic (g, h), kserve traffic (i, j), confusion, predictions, features (k, l).
    batched = sorted(family for family, yes in counted.calls if yes)
    assert batched == sorted(
        ["traffic", "latency", "traffic", "traffic", "confusion", "predictions", "features"]
    )
    own_queries = sorted(family for family, yes in counted.calls if not yes)
    # e (alone with its label): 2; f (two hosts): 2; m's custom check: 2 (one per version).
    assert own_queries == sorted(["traffic", "latency", "traffic", "latency", "custom", "custom"])


def test_a_rollout_not_expected_at_that_instant_sends_its_own_query(prometheus: PrometheusServer) -> None:
    policies = {name: p for name, p in rollouts().items() if name in ("a", "b")}
    counted = Counted([], threading.Lock())
    coalescer = QueryCoalescer(count=counted)
    a, b = (PrometheusMetricsSource(p, url=prometheus.url, coalescer=coalescer) for p in policies.values())
    try:
        a.expect(SINCE, NOW)
        b.expect(SINCE, NOW - INTERVAL_S)  # b announced another instant
        assert a.read(SINCE, NOW) == own_observations(prometheus.url, {"a": policies["a"]})["a"]
        assert b.read(SINCE, NOW) == own_observations(prometheus.url, {"b": policies["b"]})["b"]
    finally:
        a.close()
        b.close()
    assert [yes for _, yes in counted.calls] == [False] * 4


def test_a_window_start_off_the_grid_starts_at_the_next_grid_instant(prometheus: PrometheusServer) -> None:
    p = rollouts()["a"]
    source = PrometheusMetricsSource(p, url=prometheus.url, coalescer=QueryCoalescer())
    try:
        observation = source.read(SINCE - 37.5, NOW)
        assert (observation.since, observation.at) == (SINCE, NOW)
        assert observation == own_observations(prometheus.url, {"a": p})["a"]
        # Off the grid (an order read at once): the window is the one asked for.
        assert source.read(SINCE - 37.5, NOW + 1).since == SINCE - 37.5
    finally:
        source.close()


@contextmanager
def proxy(target: str, shared: Callable[[], tuple[int, bytes]], every: bool = False) -> Iterator[str]:
    """Loopback HTTP in front of ``target``: a shared query (its service names in a regex), or
    with ``every`` any query, is answered by ``shared``; the others are passed on to ``target``."""

    def handle(handler: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        if every or "destination_service_name%3D~" in handler.path:
            return shared()
        answer = httpx.get(target + handler.path, timeout=10)
        return answer.status_code, answer.content

    with http_server(handle) as url:
        yield url


SECRET_BODY = b'{"status":"error","errorType":"internal","error":"token=hunter2 leaked"}'


def refuse() -> tuple[int, bytes]:
    return 503, SECRET_BODY


def test_a_failed_shared_query_falls_back_to_each_rollouts_own(prometheus: PrometheusServer) -> None:
    policies = {
        name: p for name, p in rollouts().items() if name in ("a", "b", "c-no-series", "d-no-candidate")
    }
    own = own_observations(prometheus.url, policies)
    with proxy(prometheus.url, refuse) as url:
        shared, counted = shared_observations(url, policies, parallel=True)
    for name in policies:
        assert shared[name] == own[name], name  # its own queries, answered as before
        assert "hunter2" not in (shared[name].problem or "")
    # The shared traffic and latency queries were sent and refused; then every rollout's own.
    assert sorted(f for f, yes in counted.calls if yes) == ["latency", "traffic"]
    assert sorted(f for f, yes in counted.calls if not yes) == sorted(["traffic", "latency"] * 4)


def test_a_shared_query_that_never_answers_is_no_data_within_each_reads_deadline(
    prometheus: PrometheusServer,
) -> None:
    released = threading.Event()

    def hang() -> tuple[int, bytes]:
        released.wait(30)
        return 503, b""

    policies = {
        name: replace(p, metrics=replace(p.metrics, timeout_s=1.0))
        for name, p in rollouts().items()
        if name in ("a", "b", "d-no-candidate")
    }
    try:
        with proxy(prometheus.url, hang) as url:
            shared, counted = shared_observations(url, policies, parallel=True)
    finally:
        released.set()
    for name, observation in shared.items():
        assert observation.problem is not None, name  # never a pass
        assert "did not answer within 1s" in observation.problem, name
        assert observation.stable.requests == 0 and observation.candidate.requests == 0
    # One shared query was sent and hung (then the rollouts whose deadline came a little later
    # than the first one's tried their own); the read ended at "down or slow": no latency query.
    assert [c for c in counted.calls if c[1]] == [("traffic", True)]
    assert {c for c in counted.calls if not c[1]} <= {("traffic", False)}


def test_the_sources_reading_one_prometheus_share_one_client_until_the_last_closes(
    prometheus: PrometheusServer,
) -> None:
    """One DeadlineClient (keep-alive pool; no TLS context for plain http) per Prometheus origin,
    shared by every source; closing one source keeps the others reading; the last one closes it."""
    from mesh_canary.metrics import prometheus as prometheus_module
    from mesh_canary.metrics.deadline_http import DeadlineClient, origin

    policies = rollouts()
    key = origin(prometheus.url)
    assert prometheus_module.CLIENTS.users(key) == 0
    alone = DeadlineClient()  # a source with a client of its own, as before sharing
    own = {}
    for name, p in policies.items():
        source = PrometheusMetricsSource(p, url=prometheus.url, client=alone)
        own[name] = source.read(SINCE, NOW)
        source.close()
    alone.close()
    sources = {name: PrometheusMetricsSource(p, url=prometheus.url) for name, p in policies.items()}
    clients = {id(s._transport.client) for s in sources.values()}  # type: ignore[attr-defined]
    assert len(clients) == 1 and prometheus_module.CLIENTS.users(key) == len(policies)
    shared = next(iter(sources.values()))._transport.client  # type: ignore[attr-defined]
    names = list(sources)
    first, rest = names[: len(names) // 2], names[len(names) // 2 :]
    for name in first:
        assert sources[name].read(SINCE, NOW) == own[name], name
        sources[name].close()
        sources[name].close()  # twice: still one user given back
    assert prometheus_module.CLIENTS.users(key) == len(rest)
    for name in rest:  # the shared client still reads after others closed
        assert sources[name].read(SINCE, NOW) == own[name], name
    assert shared._ssl is None  # plain http never made a TLS context
    assert shared._pools  # the keep-alive pool is open
    for name in rest:
        sources[name].close()
    assert prometheus_module.CLIENTS.users(key) == 0
    assert shared._pools == {}  # the last source closed the client
