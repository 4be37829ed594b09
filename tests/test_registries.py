"""The registries: one line per router and per metrics provider, and a clear refusal otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_canary.core.policy import load_policy_text
from mesh_canary.metrics import PROVIDERS, MetricsTarget, metrics_for
from mesh_canary.metrics.local import LocalMetricsSource
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from mesh_canary.routing import ROUTERS, RouterTarget, router_for
from mesh_canary.routing.local import LocalRouter

POLICY = load_policy_text(
    (Path(__file__).parent.parent / "policies" / "minimal.yaml").read_text(), "minimal.yaml"
)


def test_every_router_and_provider_has_one_line() -> None:
    assert set(ROUTERS) == {"istio", "local"}
    assert set(PROVIDERS) == {"prometheus", "local"}


def test_the_local_factories_build_the_local_backends() -> None:
    router = router_for("local", POLICY, RouterTarget(envoy_admin_url="http://127.0.0.1:9"))
    assert isinstance(router, LocalRouter)
    assert (router.stable_cluster, router.candidate_cluster) == ("v1", "v2")
    source = metrics_for("local", POLICY, MetricsTarget(envoy_admin_url="http://127.0.0.1:9"))
    assert isinstance(source, LocalMetricsSource)
    prom = metrics_for("prometheus", POLICY, MetricsTarget(url="http://127.0.0.1:9"))
    assert isinstance(prom, PrometheusMetricsSource)


def test_an_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no router 'linkerd'; known routers: istio, local"):
        router_for("linkerd", POLICY, RouterTarget())
    with pytest.raises(ValueError, match="no metrics provider 'datadog'; known providers: local, prometheus"):
        metrics_for("datadog", POLICY, MetricsTarget())
    with pytest.raises(ValueError, match="Envoy admin address"):
        router_for("local", POLICY, RouterTarget())
