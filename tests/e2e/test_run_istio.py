"""`mesh-canary run --backend istio`: the standalone mode a CI/CD pipeline uses, no controller.

The real command as a subprocess, talking to the API stand-in (Istio's CRDs, a
VirtualService) through the official client and to a real Prometheus scraping a real Envoy,
which the istiod helper keeps in step with the VirtualService.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import subprocess
import time
from typing import Any

import kubernetes.client
import pytest
import yaml

from mesh_canary.localmesh.mesh import Degradation, LoadSettings, LocalMesh
from mesh_canary.localmesh.prometheus import PrometheusServer
from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.e2e.test_cluster_e2e import MESH_CANARY, NS, model_rollout, virtual_service
from tests.istiod_helper import IstiodHelper
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_run_backend_istio_rolls_back_a_degraded_candidate_and_resumes_from_state(
    tmp_path: pathlib.Path,
) -> None:
    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(KubeStandIn(crds, workdir=tmp_path))
        mesh = stack.enter_context(
            LocalMesh(
                "c-v1", "c-v2", candidate=Degradation(error_rate=0.3), load=LoadSettings(rate=40.0, threads=2)
            )
        )
        prom = stack.enter_context(PrometheusServer(scrape_configs=mesh.prometheus_scrape_configs()))
        client = kube.api_client()
        custom: Any = kubernetes.client.CustomObjectsApi(client)
        custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", NS, "virtualservices", virtual_service("scorer-c", "c-v1", "c-v2")
        )
        stack.enter_context(
            IstiodHelper(
                client,
                NS,
                "scorer-c",
                mesh.admin_url,
                {("scorer-c", "c-v1"): "c-v1", ("scorer-c", "c-v2"): "c-v2"},
            )
        )
        wait_for("scraped Envoy stats", lambda: len(prom.query("envoy_cluster_upstream_rq_xx")) >= 1, 30)

        policy = tmp_path / "policy.yaml"
        # The address in the policy is wrong on purpose: --prometheus overrides it.
        policy.write_text(yaml.safe_dump(model_rollout("scorer-c", "c-v1", "c-v2", "http://127.0.0.1:9")))
        state = tmp_path / "state.json"
        started = time.monotonic()
        proc = subprocess.run(
            [MESH_CANARY, "run", "-f", str(policy), "--backend", "istio", "--kubeconfig", str(kube.kubeconfig_path),
             "--prometheus", prom.url, "--state", str(state), "-o", "json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 3, proc.stderr[-2000:]
        doc = json.loads(proc.stdout)
        assert doc["outcome"] == "rolled_back" and "errorRate" in doc["failedChecks"]
        vs = custom.get_namespaced_custom_object(
            "networking.istio.io", "v1", NS, "virtualservices", "scorer-c"
        )
        route = vs["spec"]["http"][0]
        assert [r["weight"] for r in route["route"]] == [100, 0]
        assert route["timeout"] == "5s", "fields other than the weights are left alone"
        assert time.monotonic() - started < 90

        # Running the same command again finds the finished rollout in --state and writes nothing.
        writes = len(kube.stored("networking.istio.io/v1/virtualservices", NS, "scorer-c"))
        again = subprocess.run(
            [MESH_CANARY, "run", "-f", str(policy), "--backend", "istio", "--kubeconfig", str(kube.kubeconfig_path),
             "--prometheus", prom.url, "--state", str(state), "-o", "json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert again.returncode == 3 and json.loads(again.stdout)["outcome"] == "rolled_back"
        assert len(kube.stored("networking.istio.io/v1/virtualservices", NS, "scorer-c")) == writes
