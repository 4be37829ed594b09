"""`mesh-canary rollout ...` and `mesh-canary controller` against the API stand-in.

The verbs run in-process (click's runner) with a kubeconfig pointing at the stand-in; the
controller they talk to runs in a thread with a fake MetricsSource (see test_controller),
except in the last test, where `mesh-canary controller` is a separate process.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import kubernetes.client
import pytest
import yaml
from click.testing import CliRunner, Result

from mesh_canary.cli import main
from mesh_canary.kube.status import condition
from tests.integration.test_controller import NS, Cluster, Metrics, model_rollout, running, wait_for
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.output_schema import check_output

pytestmark = pytest.mark.integration

MESH_CANARY = str(pathlib.Path(sys.executable).parent / "mesh-canary")  # the installed console script


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    c = Cluster(kube_api)
    c.add_vs()
    return c


def cli(cluster: Cluster, *args: str) -> Result:
    return CliRunner().invoke(
        main, [*args, "--kubeconfig", str(cluster.kube.kubeconfig_path)], catch_exceptions=False
    )


def policy_file(tmp_path: pathlib.Path, candidate: str = "2.0", **spec: Any) -> str:
    path = tmp_path / f"policy-{candidate}.yaml"
    path.write_text(yaml.safe_dump(model_rollout(candidate=candidate, **spec)))
    return str(path)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_start_wait_follows_a_promotion_and_exits_0(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    with running(cluster.controller()):
        result = cli(cluster, "rollout", "start", "-f", policy_file(tmp_path), "--wait", "-o", "json")
    assert result.exit_code == 0, result.output
    docs = json_lines(result.output)
    for doc in docs:
        check_output(doc, "rollout")
    assert docs[-1]["phase"] == "Succeeded" and docs[-1]["weights"]["candidate"] == 100
    assert docs[-1]["outcome"] == "promoted" and docs[-1]["currentStep"] == docs[-1]["stepCount"]
    # It followed the steps as they happened.
    assert [d["weights"]["candidate"] for d in docs if d.get("weights")][:1] == [20]
    assert cluster.vs_weights() == [0, 100]


def test_start_wait_exits_3_on_a_rollback_and_history_shows_both(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    with running(cluster.controller()):
        ok = cli(cluster, "rollout", "start", "-f", policy_file(tmp_path, "2.0"), "--wait")
        assert ok.exit_code == 0, ok.output
        assert (
            "modelrollout models/fraud-scorer created" in ok.output and "outcome: promoted 2.0" in ok.output
        )
        cluster.metrics["3.0"] = Metrics()
        cluster.metrics["3.0"].error_rate = 0.4
        # The next release after a promotion: 2.0 (subset v2) is stable now (`rollout next`).
        nxt = tmp_path / "next.yaml"
        swap = [
            "rollout",
            "next",
            "-f",
            policy_file(tmp_path, "2.0"),
            "--candidate",
            "3.0",
            "--out",
            str(nxt),
        ]
        assert cli(cluster, *swap).exit_code == 0
        bad = cli(cluster, "rollout", "start", "-f", str(nxt), "--wait")
    assert bad.exit_code == 3, bad.output
    assert "modelrollout models/fraud-scorer configured" in bad.output
    assert "outcome: rolled back: errorRate" in bad.output
    assert cluster.vs_weights() == [0, 100]  # all on stable: 2.0, behind subset v2

    rows = json.loads(cli(cluster, "rollout", "history", "fraud-scorer", "-n", NS, "-o", "json").output)
    check_output(rows, "history")
    assert [(r["candidateVersion"], r["outcome"]) for r in rows] == [
        ("2.0", "promoted"),
        ("3.0", "rolled_back"),  # one spelling of every outcome (issue 9; was rolledBack)
    ]
    assert all(r["durationSeconds"] >= 1 for r in rows) and "errorRate" in rows[1]["reason"]
    text = cli(cluster, "rollout", "history", "-n", NS)
    assert text.exit_code == 0
    assert "models/fraud-scorer" in text.output and "rolled_back" in text.output and "promoted" in text.output


def test_start_wait_times_out_with_4_when_nothing_reconciles(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    path = policy_file(tmp_path)
    result = cli(cluster, "rollout", "start", "-f", path, "--wait", "--timeout", "1s")
    assert result.exit_code == 4
    assert "still Pending after 1s" in result.output
    again = cli(cluster, "rollout", "start", "-f", path)
    assert again.exit_code == 0 and "modelrollout models/fraud-scorer unchanged" in again.output


def test_an_invalid_policy_exits_2_before_touching_the_cluster(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    path = policy_file(tmp_path, canary={"steps": [50, 20, 100]})
    result = cli(cluster, "rollout", "start", "-f", path)
    assert result.exit_code == 2
    assert "spec.canary.steps[1]" in result.output
    assert (
        cluster.custom.list_namespaced_custom_object("mesh-canary.io", "v1alpha1", NS, "modelrollouts")[
            "items"
        ]
        == []
    )


def test_status_shows_phase_step_weights_checks_and_conditions(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()):
        wait_for("an analysis", lambda: cluster.status().get("checks"))
        doc = json.loads(cli(cluster, "rollout", "status", "fraud-scorer", "-n", NS, "-o", "json").output)
        text = cli(cluster, "rollout", "status", "fraud-scorer", "-n", NS)
    check_output(doc, "rollout")
    assert (doc["phase"], doc["currentStep"], doc["stepCount"]) == ("Progressing", 1, 3)
    assert doc["outcome"] is None and doc["startedAt"].endswith("Z")
    assert doc["weights"]["candidate"] == 20
    assert doc["checks"][0]["name"] == "errorRate" and "upper" in doc["checks"][0]
    assert {c["type"] for c in doc["conditions"]} >= {"Progressing", "PolicyValid", "WeightsInSync"}
    assert text.exit_code == 0
    for needle in (
        "models/fraud-scorer",
        "1.0 -> 2.0",
        "Progressing",
        "step 1/3",
        "candidate 20%",
        "errorRate",
        "PolicyValid",
    ):
        assert needle in text.output, needle
    missing = cli(cluster, "rollout", "status", "nope", "-n", NS)
    assert missing.exit_code == 1 and "modelrollout models/nope: not found" in missing.output


def test_status_watch_streams_changes_until_the_end(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    cluster.add_rollout(model_rollout())
    with running(cluster.controller()):
        result = cli(cluster, "rollout", "status", "fraud-scorer", "-n", NS, "--watch", "-o", "json")
    docs = json_lines(result.output)
    assert result.exit_code == 0 and len(docs) >= 2
    for doc in docs:
        check_output(doc, "rollout")
    assert docs[-1]["phase"] == "Succeeded"


def test_pause_resume_approve_and_abort_are_handled_by_the_controller(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    cluster.add_rollout(model_rollout(gates={"approval": "beforePromotion"}))
    with running(cluster.controller()):
        wait_for("the start", lambda: cluster.status().get("phase") == "Progressing")
        paused = cli(cluster, "rollout", "pause", "fraud-scorer", "-n", NS)
        assert paused.exit_code == 0, paused.output
        assert "handled by the controller: Paused" in paused.output
        resumed = cli(cluster, "rollout", "resume", "fraud-scorer", "-n", NS, "-o", "json")
        assert resumed.exit_code == 0
        doc = json.loads(resumed.output)
        check_output(doc, "order")
        assert doc["handled"] is True and doc["request"].startswith("false@")
        wait_for(
            "the gate",
            lambda: (
                (cluster.status().get("phase"), cluster.status().get("currentStep"))
                == ("WaitingForApproval", 2)
            ),
        )
        approved = cli(cluster, "rollout", "approve", "fraud-scorer", "-n", NS)
        assert approved.exit_code == 0, approved.output
        wait_for("promotion", lambda: cluster.status().get("phase") == "Succeeded")
    reasons = [e[0] for e in cluster.events()]
    assert {"Paused", "Resumed", "WaitingForApproval", "Approved", "Promoted"} <= set(reasons)


def test_abort_snaps_to_stable(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    with running(cluster.controller()):
        wait_for("the start", lambda: cluster.vs_weights() == [80, 20])
        result = cli(cluster, "rollout", "abort", "fraud-scorer", "-n", NS)
    assert result.exit_code == 0, result.output
    assert "handled by the controller: RolledBack" in result.output
    assert cluster.vs_weights() == [100, 0]
    assert condition(cluster.status(), "RolledBack")["reason"] == "Aborted"  # type: ignore[index]


def test_an_order_nobody_handles_exits_4_but_stays_recorded(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout())
    result = cli(cluster, "rollout", "abort", "fraud-scorer", "-n", NS, "--timeout", "1s")
    assert result.exit_code == 4 and "has not handled it" in result.output
    annotations = cluster.rollout()["metadata"]["annotations"]
    assert annotations["mesh-canary.io/abort"]
    quick = cli(cluster, "rollout", "approve", "fraud-scorer", "-n", NS, "--no-wait")
    assert quick.exit_code == 0


def test_start_wait_on_an_approval_gate_exits_4(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    path = policy_file(tmp_path, gates={"approval": "beforePromotion"})
    with running(cluster.controller()):
        result = cli(cluster, "rollout", "start", "-f", path, "--wait")
    assert result.exit_code == 4
    assert "waiting for a person (`mesh-canary rollout approve fraud-scorer`)" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_controller_command_serves_probes_logs_json_and_stops_on_sigterm(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    port = _free_port()
    log_path = tmp_path / "controller.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                MESH_CANARY,
                "controller",
                "--kubeconfig",
                str(cluster.kube.kubeconfig_path),
                "--namespace",
                NS,
                "--leader-elect",
                "--metrics-addr",
                f"127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for("/readyz 200", lambda: httpx.get(f"{base}/readyz").status_code == 200, timeout_s=30)
            assert httpx.get(f"{base}/livez").status_code == 200
            metrics = httpx.get(f"{base}/metrics").text
            assert "mesh_canary_leader 1.0" in metrics and "mesh_canary_reconcile_duration_seconds" in metrics
            lease: Any = kubernetes.client.CoordinationV1Api(cluster.client).read_namespaced_lease(
                "mesh-canary-controller", NS
            )
            holder = lease.spec.holder_identity
            assert holder
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert time.monotonic() - started < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lease = kubernetes.client.CoordinationV1Api(cluster.client).read_namespaced_lease(
        "mesh-canary-controller", NS
    )
    assert lease.spec.holder_identity is None, "the Lease is released on SIGTERM"
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(r["msg"] == "controller started" and r["identity"] == holder for r in lines)
    assert lines[-1]["msg"] == "controller stopped" and all("level" in r and "ts" in r for r in lines)
