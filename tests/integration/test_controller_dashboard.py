"""The controller serves the live dashboard behind `--dashboard-address`: the page and its
JSON list the ModelRollouts it watches (read from its informer), read-only unless
`--dashboard-allow-writes`. Against the API stand-in; the last test runs the real
`mesh-canary controller` process."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
from typing import Any

import httpx
import pytest

from mesh_canary.kube.status import ANNOTATION_PAUSE
from tests.integration.test_controller import NS, Cluster, model_rollout, phase_is, running
from tests.integration.test_rollout_cli import MESH_CANARY, _free_port
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SLOW = {"steps": [20, 50, 100], "minStepDuration": "60s", "maxStepDuration": "120s"}


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    c = Cluster(kube_api)
    c.add_vs()
    return c


def _listed(base: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{base}api/rollouts", timeout=10).json()
    return doc


def test_the_controllers_dashboard_lists_what_it_watches_and_is_read_only(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller(dashboard_addr="127.0.0.1:0")) as ctl:
        assert ctl.dashboard_url is not None
        base = ctl.dashboard_url
        wait_for(
            "the rollout at 20% on the dashboard",
            lambda: (
                [
                    (r.get("phase"), (r.get("weights") or {}).get("candidate"))
                    for r in _listed(base)["rollouts"]
                ]
                == [("Progressing", 20)]
            ),
        )
        page = httpx.get(base, timeout=10)
        one = httpx.get(f"{base}api/r/{NS}/fraud-scorer", timeout=10).json()
        order = httpx.post(
            f"{base}api/r/{NS}/fraud-scorer/pause", headers={"X-Mesh-Canary": "order"}, timeout=10
        )
    assert page.status_code == 200 and "fraud-scorer" in page.text
    assert one["state"]["phase"] == "Progressing" and one["view"]["candidateVersion"] == "2.0"
    assert order.status_code == 403 and "--dashboard-allow-writes" in order.json()["error"]
    assert ANNOTATION_PAUSE not in (cluster.rollout()["metadata"].get("annotations") or {})


def test_no_dashboard_unless_asked(cluster: Cluster) -> None:
    with running(cluster.controller()) as ctl:
        assert ctl.dashboard_url is None


def test_the_controller_process_serves_the_dashboard_and_its_buttons_with_writes(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    port = _free_port()
    log_path = tmp_path / "controller.log"
    command = [
        MESH_CANARY,
        "controller",
        "--kubeconfig",
        str(cluster.kube.kubeconfig_path),
        "--namespace",
        NS,
    ]
    command += ["--metrics-addr", "127.0.0.1:0", "--dashboard-address", f"127.0.0.1:{port}"]
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [*command, "--dashboard-allow-writes"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            base = f"http://127.0.0.1:{port}/"
            # No Prometheus here: the rollout holds at its first step (no data is never a pass).
            wait_for(
                "the rollout on the page",
                lambda: [r.get("phase") for r in _listed(base)["rollouts"]] == ["Progressing"],
                timeout_s=60,
            )
            page = httpx.get(f"{base}r/{NS}/fraud-scorer", timeout=10)
            assert page.status_code == 200 and 'data-verb="pause"' in page.text
            order = httpx.post(
                f"{base}api/r/{NS}/fraud-scorer/pause", headers={"X-Mesh-Canary": "order"}, timeout=10
            )
            assert order.status_code == 200, order.text
            wait_for("the pause handled by the controller", phase_is(cluster, "Paused"), timeout_s=60)
            wait_for(
                "the dashboard showing it",
                lambda: _listed(base)["rollouts"][0].get("phase") == "Paused",
                timeout_s=30,
            )
            # The rule the `rollout` verbs apply: a paused rollout cannot be retried.
            retry = httpx.post(
                f"{base}api/r/{NS}/fraud-scorer/retry", headers={"X-Mesh-Canary": "order"}, timeout=10
            )
            assert (
                retry.status_code == 409
                and "fraud-scorer is Paused: retry restarts only" in retry.json()["error"]
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    served = [r for r in lines if r["msg"] == "dashboard serving"]
    assert served and served[0]["url"] == f"http://127.0.0.1:{port}/" and served[0]["writes"] is True
    assert cluster.rollout()["metadata"]["annotations"][ANNOTATION_PAUSE].startswith("true@")
