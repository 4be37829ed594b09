"""The registries: one line per router and per metrics provider, and a clear refusal otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_canary.core.policy import load_policy_text
from mesh_canary.metrics import PROVIDERS, MetricsTarget, metrics_for
from mesh_canary.metrics.local import LocalMetricsSource
from mesh_canary.metrics.prometheus import PrometheusMetricsSource
from mesh_canary.routing import ROUTERS, RouterTarget, router_for, router_for_route
from mesh_canary.routing.local import LocalRouter

POLICY = load_policy_text(
    (Path(__file__).parent.parent / "policies" / "minimal.yaml").read_text(), "minimal.yaml"
)


def test_every_router_and_provider_has_one_line() -> None:
    assert set(ROUTERS) == {"istio", "gateway-api", "kserve", "local"}
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
    with pytest.raises(
        ValueError, match="no router 'linkerd'; known routers: gateway-api, istio, kserve, local"
    ):
        router_for("linkerd", POLICY, RouterTarget())
    with pytest.raises(ValueError, match="no metrics provider 'datadog'; known providers: local, prometheus"):
        metrics_for("datadog", POLICY, MetricsTarget())
    with pytest.raises(ValueError, match="Envoy admin address"):
        router_for("local", POLICY, RouterTarget())


def test_the_policys_route_kind_picks_the_cluster_router() -> None:
    from mesh_canary.routing import route_kinds, router_name_for
    from mesh_canary.routing.gateway import GatewayRouter
    from mesh_canary.routing.istio import IstioRouter

    assert route_kinds() == {
        "VirtualService": "istio",
        "HTTPRoute": "gateway-api",
        "InferenceService": "kserve",
    }
    assert router_name_for(POLICY) == "istio"
    http = load_policy_text(
        (Path(__file__).parent.parent / "policies" / "gateway-api.yaml").read_text(), "gateway-api.yaml"
    )
    assert router_name_for(http) == "gateway-api"
    assert isinstance(router_for_route(http, RouterTarget(api_client=object())), GatewayRouter)
    assert isinstance(router_for_route(POLICY, RouterTarget(api_client=object())), IstioRouter)


def test_the_schema_offers_exactly_the_registrys_route_kinds() -> None:
    from mesh_canary.core.policy import spec_schema
    from mesh_canary.routing import route_kinds

    kinds = spec_schema()["properties"]["route"]["properties"]["kind"]["enum"]
    assert sorted(kinds) == sorted(route_kinds())


def test_a_cluster_backend_that_writes_another_kind_is_bad_input_and_touches_nothing() -> None:
    from mesh_canary.run.wiring import LocalInputError, run_policy

    with pytest.raises(
        LocalInputError,
        match="--backend gateway-api writes HTTPRoutes, but the policy names VirtualService default/fraud-scorer: use --backend istio",
    ):
        run_policy(POLICY, backend="gateway-api", kubeconfig="/nonexistent")


def test_the_cli_offers_the_registrys_routers() -> None:
    from click.testing import CliRunner

    from mesh_canary.cli import main

    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0 and "[gateway-api|istio|kserve|local]" in result.output
