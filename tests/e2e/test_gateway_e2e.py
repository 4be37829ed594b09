"""The cluster loop through a Gateway API HTTPRoute, every part running.

- the Kubernetes API stand-in holds the Gateway API's HTTPRoute CRD (standard channel), two
  HTTPRoutes and two ModelRollouts whose ``spec.route`` names them; every write of the
  controller is validated against the Gateway API's own schema;
- `mesh-canary controller` runs as a separate process and picks the gateway-api router from
  the route's kind (no flag);
- a Gateway implementation stand-in (tests/gateway_helper.py) moves a real Envoy per
  HTTPRoute; each Envoy fronts two real model servers under load; a real Prometheus scrapes
  them, and the controller reads its metrics from it (profile envoy).

Rollout A (healthy candidate) is promoted; rollout B (30% errors) is rolled back, after
which the model servers count every new request on stable and none on the candidate.
"""

from __future__ import annotations

import contextlib
import pathlib
from typing import Any

import kubernetes.client
import pytest

from mesh_canary.core.weights import Weights
from mesh_canary.localmesh.mesh import HEALTHY, Degradation, LoadSettings, LocalMesh
from mesh_canary.localmesh.prometheus import PrometheusServer
from mesh_canary.routing.gateway import GROUP, PLURAL, VERSION
from tests.crd_schema import HTTPROUTE_CRD, MODELROLLOUT_CRD, load_yaml, validator_for
from tests.e2e.test_cluster_e2e import NS, ControllerProcess, assert_only_served_by, scrape_configs
from tests.gateway_helper import GatewayHelper
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

RES = f"{GROUP}/{VERSION}/{PLURAL}"


def http_route(name: str, stable: str, candidate: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "mesh-gateway", "namespace": "infra"}],
            "rules": [
                {
                    "name": "scoring",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": f"{name}-{stable}", "port": 8080, "weight": 100},
                        {"name": f"{name}-{candidate}", "port": 8080, "weight": 0},
                    ],
                    "timeouts": {"request": "5s"},
                }
            ],
        },
    }


def model_rollout(name: str, stable: str, candidate: str, prometheus_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "mesh-canary.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "route": {"kind": "HTTPRoute", "name": name, "rules": ["scoring"]},
            "stable": {"destination": {"host": f"{name}-{stable}", "port": 8080}, "metricsVersion": stable},
            "candidate": {
                "destination": {"host": f"{name}-{candidate}", "port": 8080},
                "metricsVersion": candidate,
            },
            "canary": {"steps": [25, 50, 100], "minStepDuration": "4s", "maxStepDuration": "90s"},
            "analysis": {
                "interval": "1s",
                "minRequests": 20,
                "noDataTimeout": "60s",
                "checks": [
                    {"metric": "errorRate", "max": 0.05, "maxIncrease": 0.03},
                    {"metric": "latency", "quantile": 0.99, "max": "500ms"},
                ],
            },
            "metrics": {"provider": "prometheus", "profile": "envoy", "address": prometheus_url},
        },
    }


def test_an_httproute_rollout_promoted_and_one_rolled_back_with_a_real_envoy(tmp_path: pathlib.Path) -> None:
    crds = [load_yaml(p) for p in [HTTPROUTE_CRD, MODELROLLOUT_CRD]]
    load = LoadSettings(rate=40.0, threads=2)
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(KubeStandIn(crds, workdir=tmp_path))
        mesh_a = stack.enter_context(LocalMesh("a-v1", "a-v2", candidate=HEALTHY, load=load))
        mesh_b = stack.enter_context(
            LocalMesh("b-v1", "b-v2", candidate=Degradation(error_rate=0.3), load=load)
        )
        prom = stack.enter_context(
            PrometheusServer(
                scrape_configs=[*scrape_configs("a", mesh_a), *scrape_configs("b", mesh_b)],
                scrape_interval_s=1.0,
            )
        )
        client = kube.api_client()
        custom: Any = kubernetes.client.CustomObjectsApi(client)
        meshes = {"scorer-a": mesh_a, "scorer-b": mesh_b}
        helpers = {}
        for name, mesh in meshes.items():
            stable, candidate = mesh.stable_version, mesh.candidate_version
            custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, http_route(name, stable, candidate)
            )
            clusters = {(f"{name}-{stable}", None): stable, (f"{name}-{candidate}", None): candidate}
            helpers[name] = stack.enter_context(
                GatewayHelper(client, NS, name, mesh.admin_url, clusters, "scoring")
            )
        wait_for("scraped Envoy stats", lambda: len(prom.query("envoy_cluster_upstream_rq_xx")) >= 2, 30)

        def status(name: str) -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object("mesh-canary.io", "v1alpha1", NS, "modelrollouts", name)
            return dict(obj.get("status") or {})

        def route_weights(name: str) -> list[list[int]]:
            out: list[list[int]] = []
            for version in kube.stored(RES, NS, name):
                assert validator_for(HTTPROUTE_CRD).errors(version) == []
                w = [ref.get("weight", 1) for ref in version["spec"]["rules"][0]["backendRefs"]]
                if not out or out[-1] != w:
                    out.append(w)
            return out

        controller = ControllerProcess(kube.kubeconfig_path, tmp_path / "controller.log", prom.url)
        stack.callback(controller.terminate)
        for name, mesh in meshes.items():
            custom.create_namespaced_custom_object(
                "mesh-canary.io",
                "v1alpha1",
                NS,
                "modelrollouts",
                model_rollout(name, mesh.stable_version, mesh.candidate_version, prom.url),
            )

        # B: the degraded candidate is caught and every new request reaches stable.
        wait_for("B rolled back", lambda: status("scorer-b").get("phase") == "RolledBack", 90)
        wait_for("Envoy B back on stable", lambda: mesh_b.router.get_weights() == Weights(100, 0), 5)
        assert_only_served_by(mesh_b, "b-v1", "b-v2", settle=20, window=60)
        b = status("scorer-b")
        assert "errorRate" in b["reason"] and b["weights"]["candidate"] == 0
        assert route_weights("scorer-b") == [[100, 0], [75, 25], [100, 0]]
        in_sync = {c["type"]: c for c in b["conditions"]}["WeightsInSync"]
        assert in_sync["message"] == "the HTTPRoute holds the weights mesh-canary wrote"

        # A: promoted step by step, Envoy following the HTTPRoute.
        wait_for("A promoted", lambda: status("scorer-a").get("phase") == "Succeeded", 120)
        wait_for("Envoy A all on the candidate", lambda: mesh_a.router.get_weights() == Weights(0, 100), 5)
        assert route_weights("scorer-a") == [[100, 0], [75, 25], [50, 50], [0, 100]]
        assert [w for _, w in helpers["scorer-a"].applied] == [
            Weights(100, 0),
            Weights(75, 25),
            Weights(50, 50),
            Weights(0, 100),
        ]
        assert_only_served_by(mesh_a, "a-v2", "a-v1", settle=20, window=30)
        assert helpers["scorer-a"].errors == [] and helpers["scorer-b"].errors == []
        assert controller.terminate() == 0
