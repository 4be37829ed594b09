"""grafana/mesh-canary.json against a real Prometheus scraping a real controller process.

Every part runs: the Kubernetes API stand-in holds two VirtualServices and two
ModelRollouts; `mesh-canary controller` runs as a separate process; a real Envoy fronts two
real model servers under load (moved by the istiod stand-in); a real Prometheus scrapes
Envoy, the model servers and the controller's /metrics, and the controller reads the
rollouts' metrics from it. Rollout A (healthy) stays in its first step; rollout B expects
60% of the traffic where the route it judges carries A's 25%, so its trafficShare check
fails and it rolls back. Then every panel query of the dashboard, with its template
variables resolved the way Grafana resolves them (the variable queries run against the same
Prometheus), must return data: conditions are waited for, never durations.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import kubernetes.client
import pytest

from mesh_canary.localmesh.mesh import HEALTHY, LoadSettings, LocalMesh
from mesh_canary.localmesh.prometheus import PrometheusServer, free_port
from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.e2e.test_cluster_e2e import NS, ControllerProcess, virtual_service
from tests.istiod_helper import IstiodHelper
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "grafana" / "mesh-canary.json"
# Grafana's $__rate_interval for a 1 s scrape interval is a few seconds; 1m is safely wider.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def rollout(
    name: str, mesh: LocalMesh, prometheus_url: str, steps: list[int], checks: list[Any]
) -> dict[str, Any]:
    from tests.conftest import model_rollout

    return model_rollout(
        name,
        subsets=(mesh.stable_version, mesh.candidate_version),
        metrics_versions=True,
        prometheus=prometheus_url,
        canary={"steps": steps, "minStepDuration": "10m", "maxStepDuration": "20m"},
        analysis={"interval": "1s", "minRequests": 20, "noDataTimeout": "5m", "checks": checks},
    )


class Grafana:
    """What Grafana does with the dashboard's variables and queries, against one Prometheus."""

    def __init__(self, prometheus_url: str, dashboard: Mapping[str, Any]) -> None:
        self.url = prometheus_url
        self.dashboard = dashboard
        self.variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def label_values(self, definition: str, values: Mapping[str, str]) -> list[str]:
        """``label_values(selector, label)``, as Grafana's Prometheus variable query."""
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        assert found, f"not a label_values query: {definition}"
        selector, label = self.substitute(found.group(1), values), found.group(2)
        series = self.get("/api/v1/series", **{"match[]": selector})
        return sorted({s[label] for s in series if label in s})

    def substitute(self, expr: str, values: Mapping[str, str]) -> str:
        def one(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in BUILTINS:
                return BUILTINS[name]
            assert name in values, f"{expr}: ${name} is not a dashboard variable"
            return values[name]

        return VARIABLE.sub(one, expr)

    def resolve(self, name: str, values: Mapping[str, str]) -> list[str]:
        variable = self.variables[name]
        return self.label_values(variable["query"]["query"], values)

    @staticmethod
    def all_of(options: Sequence[str]) -> str:
        """A multi-value variable set to All: Grafana's regex of every value."""
        return "(" + "|".join(re.escape(o) for o in options) + ")"

    def query(self, expr: str) -> list[Any]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def panels(self) -> Iterator[dict[str, Any]]:
        for panel in self.dashboard["panels"]:
            if panel["type"] != "row":
                yield panel
            yield from panel.get("panels", [])


def test_every_panel_of_the_dashboard_returns_data_from_a_running_controller(tmp_path: pathlib.Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(KubeStandIn(crds, workdir=tmp_path))
        mesh = stack.enter_context(
            LocalMesh("a-v1", "a-v2", candidate=HEALTHY, load=LoadSettings(rate=30.0, threads=2))
        )
        # The controller needs Prometheus's address and Prometheus the controller's: the port first.
        prom_port = free_port()
        controller = ControllerProcess(
            kube.kubeconfig_path, tmp_path / "controller.log", f"http://127.0.0.1:{prom_port}"
        )
        stack.callback(controller.terminate)
        controller_job = {
            "job_name": "mesh-canary-controller",
            "static_configs": [{"targets": [f"127.0.0.1:{controller.port}"]}],
        }
        prom = stack.enter_context(
            PrometheusServer(
                scrape_configs=[*mesh.prometheus_scrape_configs(), controller_job], port=prom_port
            )
        )
        client = kube.api_client()
        custom: Any = kubernetes.client.CustomObjectsApi(client)
        for name in ("scorer-a", "scorer-b"):
            custom.create_namespaced_custom_object(
                "networking.istio.io",
                "v1",
                NS,
                "virtualservices",
                virtual_service(name, mesh.stable_version, mesh.candidate_version),
            )
        versions = {("scorer-a", v): v for v in (mesh.stable_version, mesh.candidate_version)}
        stack.enter_context(IstiodHelper(client, NS, "scorer-a", mesh.admin_url, versions))
        wait_for("scraped Envoy stats", lambda: prom.query("envoy_cluster_upstream_rq_xx"), 30)
        healthy = [
            {"metric": "errorRate", "max": 0.05},
            # The share form: its bounds are finite from the first requests (a p99's upper
            # bound stays unbounded, so unpublished, until enough requests lie above it).
            {"metric": "latency", "slowerThan": "250ms", "maxIncrease": 0.02},
        ]
        share = [{"metric": "trafficShare", "maxDeviation": 0.05}]
        for doc in (
            rollout("scorer-a", mesh, prom.url, [25, 50, 100], healthy),
            rollout("scorer-b", mesh, prom.url, [60, 100], share),
        ):
            custom.create_namespaced_custom_object("mesh-canary.io", "v1alpha1", NS, "modelrollouts", doc)

        def status(name: str) -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object("mesh-canary.io", "v1alpha1", NS, "modelrollouts", name)
            return dict(obj.get("status") or {})

        wait_for("B rolled back", lambda: status("scorer-b").get("phase") == "RolledBack", 90)
        assert "trafficShare" in status("scorer-b")["reason"]
        wait_for(
            "A in step 1 with an estimate for every check",
            lambda: (
                (s := status("scorer-a")).get("phase") == "Progressing"
                and s["weights"]["candidate"] == 25
                and all(c.get("estimate") is not None for c in s.get("checks", []))
                and len(s.get("checks", [])) == 2
            ),
            90,
        )

        grafana = Grafana(prom.url, dashboard)
        namespaces = wait_for("the namespace variable", lambda: grafana.resolve("namespace", {}), 30)
        assert namespaces == [NS]
        values = {"namespace": grafana.all_of(namespaces)}
        rollouts = wait_for(
            "the rollout variable", lambda: len(r := grafana.resolve("rollout", values)) == 2 and r, 30
        )
        assert rollouts == ["scorer-a", "scorer-b"]
        checked = 0
        for name in rollouts:
            one = {**values, "rollout": name}
            checks = grafana.resolve("check", one)
            assert checks == sorted(c["name"] for c in status(name)["checks"]) and checks
            for panel in grafana.panels():
                repeated = [one] if "repeat" not in panel else [{**one, "check": c} for c in checks]
                for vals in repeated:
                    for target in panel["targets"]:
                        expr = grafana.substitute(target["expr"], vals)
                        wait_for(
                            f"panel {panel['title']!r} query {target['refId']} for {vals}: {expr}",
                            lambda expr=expr: grafana.query(expr),
                            60,
                        )
                        checked += 1
        print(f"{checked} panel queries answered")
        # The band's ends are the controller's bounds, around the estimate.
        a = {**values, "rollout": "scorer-a", "check": "errorRate"}
        [lower] = grafana.query(
            grafana.substitute(
                'max(mesh_canary_rollout_check_lower_bound{rollout="$rollout", check="$check"})', a
            )
        )
        [upper] = grafana.query(
            grafana.substitute(
                'max(mesh_canary_rollout_check_upper_bound{rollout="$rollout", check="$check"})', a
            )
        )
        assert float(lower["value"][1]) <= float(upper["value"][1])
        [rollback] = grafana.query('mesh_canary_rollout_rollbacks_total{rollout="scorer-b"}')
        assert rollback["metric"]["reason"] == "trafficShare"


def test_the_dashboard_is_well_formed() -> None:
    """Every panel has a query and a datasource; every variable a query uses is defined."""
    dashboard = json.loads(DASHBOARD.read_text())
    grafana = Grafana("http://unused", dashboard)
    names = set(grafana.variables) | set(BUILTINS)
    panels = list(grafana.panels())
    assert {p["type"] for p in panels} >= {"table", "timeseries", "state-timeline", "stat"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        assert panel.get("repeat") in (None, *grafana.variables)
        for target in panel["targets"]:
            used = set(VARIABLE.findall(target["expr"])) - {"datasource"}
            assert used <= names, f"{panel['title']}: undefined {used - names}"
    band = next(p for p in panels if p.get("repeat") == "check")
    overrides = {o["matcher"]["options"]: o["properties"] for o in band["fieldConfig"]["overrides"]}
    assert {"id": "custom.fillBelowTo", "value": "lower"} in overrides["upper"]
    assert {t["legendFormat"] for t in band["targets"]} == {"estimate", "lower", "upper"}
