"""Step hooks and the audit record in the controller, against the Kubernetes API stand-in
and a real hook receiver on 127.0.0.1 (tests/test_hooks.py)."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from mesh_canary.cli import main
from tests.conftest import NS, model_rollout
from tests.integration.test_controller import Cluster, phase_is, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.test_hooks import Receiver
from tests.test_hooks import receiver as receiver  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_a_failing_pre_rollout_hook_leaves_the_virtual_service_untouched(
    cluster: Cluster, receiver: Receiver
) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(hooks={"preRollout": [{"name": "tests", "url": receiver.url + "/fail"}]})
    )
    with running(cluster.controller()):
        wait_for("the end", phase_is(cluster, "RolledBack"))
    assert cluster.vs_history() == [[100, 0]] and cluster.writes == []
    status = cluster.status()
    assert "preRollout hook failed: tests: answered HTTP 500" in status["reason"]
    audit = status["rollout"]["audit"]
    assert [e["kind"] for e in audit if e["kind"] != "notification"] == ["hook"]
    assert audit[0]["calls"][0]["status"] == 500


def test_confirm_promotion_holds_the_last_step_in_the_controller(
    cluster: Cluster, receiver: Receiver
) -> None:
    receiver.gate_after = 3
    cluster.add_vs()
    hooks = {"confirmPromotion": [{"name": "gate", "url": receiver.url + "/gate", "method": "GET"}]}
    cluster.add_rollout(model_rollout(hooks=hooks))
    with running(cluster.controller()):
        wait_for("promotion", phase_is(cluster, "Succeeded"), timeout_s=60)
    assert receiver.paths().count("/gate") == 3
    assert cluster.vs_history() == [[100, 0], [80, 20], [50, 50], [0, 100]]
    audit = cluster.status()["rollout"]["audit"]
    gate = [e["ok"] for e in audit if e["kind"] == "hook"]
    assert gate == [False, False, True]
    assert [e["weights"]["candidate"] for e in audit if e["kind"] == "write"] == [20, 50, 100]


def test_a_header_from_a_secret_is_sent_and_appears_nowhere_in_the_resource(
    cluster: Cluster, receiver: Receiver
) -> None:
    token = "Bearer hook-secret-7f3a9c2e"
    cluster.core.create_namespaced_secret(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "ci-token", "namespace": NS},
            "data": {"header": base64.b64encode(token.encode()).decode()},
        },
    )
    header = {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "ci-token", "key": "header"}}}
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(
            hooks={"preRollout": [{"name": "tests", "url": receiver.url + "/ok", "headers": [header]}]}
        )
    )
    with running(cluster.controller()):
        wait_for("promotion", phase_is(cluster, "Succeeded"), timeout_s=60)
    assert receiver.calls[0][2]["Authorization"] == token
    assert "hook-secret-7f3a9c2e" not in json.dumps(cluster.rollout())
    assert "hook-secret-7f3a9c2e" not in json.dumps([list(e) for e in cluster.events()])


def test_rollout_history_audit_reads_a_modelrollouts_record(cluster: Cluster) -> None:
    cluster.add_vs()
    cluster.add_rollout(
        model_rollout(canary={"steps": [20, 50, 100], "minStepDuration": "30s", "maxStepDuration": "60s"})
    )
    kubeconfig = ["--kubeconfig", str(cluster.kube.kubeconfig_path), "-n", NS]
    with running(cluster.controller()):
        wait_for("the start", lambda: cluster.vs_weights() == [80, 20])
        aborted = CliRunner().invoke(main, ["rollout", "abort", "fraud-scorer", *kubeconfig])
        assert aborted.exit_code == 0, aborted.output
    done = CliRunner().invoke(
        main, ["rollout", "history", "fraud-scorer", "--audit", "-o", "json", *kubeconfig]
    )
    assert done.exit_code == 0, done.output
    entries = [json.loads(line) for line in done.output.splitlines()]
    kinds = [e["kind"] for e in entries]
    assert kinds.index("command") < len(kinds) - 1
    order = next(e for e in entries if e["kind"] == "command")
    assert (order["command"], order["by"], order["phase"]) == ("abort", "a person", "RolledBack")
    rollback = [e for e in entries if e["kind"] == "write" and e["rollback"]]
    assert len(rollback) == 1 and "aborted by a person" in rollback[0]["why"]
    assert rollback[0]["weights"]["stable"] == 100
    text = CliRunner().invoke(main, ["rollout", "history", "fraud-scorer", "--audit", *kubeconfig])
    assert "ROLLBACK wrote 100/0 by mesh-canary" in text.output
