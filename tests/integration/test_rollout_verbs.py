"""`rollout get|list|retry|promote --full|next` against the API stand-in (real HTTP, the
official client), with the controller in a thread (a fake MetricsSource decides health),
and `list --watch` as a real `mesh-canary` subprocess stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from mesh_canary.cli import main
from mesh_canary.kube.names import KIND
from tests.integration.test_controller import NS, VS, Cluster, Metrics, model_rollout, phase_is, running
from tests.integration.test_rollout_cli import MESH_CANARY, cli, policy_file
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.output_schema import check_output
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    c = Cluster(kube_api)
    c.add_vs()
    return c


SLOW = {"steps": [20, 50, 100], "minStepDuration": "60s", "maxStepDuration": "120s"}


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_get_prints_the_object_as_kubectl_does_and_list_a_table_and_a_list(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller()):
        wait_for("an analysis", lambda: cluster.status().get("checks"))
        obj = _json(cli(cluster, "rollout", "get", "fraud-scorer", "-n", NS, "-o", "json"))
        as_yaml = yaml.safe_load(
            cli(cluster, "rollout", "get", "fraud-scorer", "-n", NS, "-o", "yaml").stdout
        )
        text = cli(cluster, "rollout", "get", "fraud-scorer", "-n", NS)
        table = cli(cluster, "rollout", "list", "-n", NS)
        listed = _json(cli(cluster, "rollout", "list", "-A", "-o", "json"))
    check_output(obj, "modelRollout")
    stored = cluster.rollout()
    assert obj["kind"] == KIND and obj["metadata"]["uid"] == stored["metadata"]["uid"]
    assert obj["spec"] == stored["spec"] and obj["status"]["phase"] == "Progressing"
    assert as_yaml["metadata"]["name"] == "fraud-scorer" and as_yaml["spec"] == stored["spec"]
    assert text.exit_code == 0 and "Progressing" in text.output and "step 1/3" in text.output
    header, row = table.output.splitlines()[:2]
    assert header.split()[:5] == ["NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT"]
    assert row.split()[:7] == [NS, "fraud-scorer", "Progressing", "1/3", "20%", "1.0", "2.0"]
    check_output(listed, "modelRolloutList")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["fraud-scorer"]
    missing = cli(cluster, "rollout", "get", "nope", "-n", NS)
    assert missing.exit_code == 1 and "modelrollout models/nope: not found" in missing.output


def test_list_watch_streams_one_object_per_change_until_ctrl_c(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout())
    proc = subprocess.Popen(
        [
            MESH_CANARY,
            "rollout",
            "list",
            "-n",
            NS,
            "-w",
            "-o",
            "json",
            "--kubeconfig",
            str(cluster.kube.kubeconfig_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    docs: list[dict[str, Any]] = []
    try:
        assert proc.stdout is not None
        docs.append(json.loads(proc.stdout.readline()))  # the list as it is, first
        with running(cluster.controller()):
            while docs[-1].get("status", {}).get("phase") != "Succeeded":
                line = proc.stdout.readline()
                assert line, f"the watch ended early: {proc.stderr.read() if proc.stderr else ''}"
                docs.append(json.loads(line))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, "Ctrl-C ends a watch without an error"
    for doc in docs:
        check_output(doc, "modelRollout")
    phases = [d.get("status", {}).get("phase", "Pending") for d in docs]
    assert phases[0] == "Pending" and "Progressing" in phases and phases[-1] == "Succeeded"
    weights = [d["status"]["weights"]["candidate"] for d in docs if "weights" in d.get("status", {})]
    assert weights[0] == 20 and weights[-1] == 100 and weights == sorted(weights)


def test_retry_restarts_a_rolled_back_rollout_from_step_one_and_refuses_other_phases(
    cluster: Cluster,
) -> None:
    cluster.metrics["2.0"] = bad = Metrics()
    bad.error_rate = 0.4
    cluster.add_rollout(model_rollout())
    with running(cluster.controller()):
        wait_for("the rollback", phase_is(cluster, "RolledBack"))
        bad.error_rate = 0.0  # the candidate fixed (say, a bad config map)
        retried = cli(cluster, "rollout", "retry", "fraud-scorer", "-n", NS, "-o", "json")
        doc = _json(retried)
        check_output(doc, "order")
        assert doc["command"] == "retry" and doc["handled"] is True
        wait_for("the promotion", phase_is(cluster, "Succeeded"))
        again = cli(cluster, "rollout", "retry", "fraud-scorer", "-n", NS)
    # The retry started again at step 1: 80/20 after the rollback, then every step.
    assert cluster.vs_history() == [[100, 0], [80, 20], [100, 0], [80, 20], [50, 50], [0, 100]]
    assert again.exit_code == 2 and "fraud-scorer is Succeeded: retry restarts only" in again.output
    history = _json(cli(cluster, "rollout", "history", "fraud-scorer", "-n", NS, "-o", "json"))
    assert [h["outcome"] for h in history] == ["rolled_back", "promoted"]
    assert "Retried" in [e[0] for e in cluster.events()]


def test_a_retry_of_a_running_rollout_is_refused_and_nothing_is_written(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller()):
        wait_for("the first step", lambda: cluster.status().get("weights", {}).get("candidate") == 20)
        refused = cli(cluster, "rollout", "retry", "fraud-scorer", "-n", NS)
    assert refused.exit_code == 2
    assert (
        "fraud-scorer is Progressing: retry restarts only a RolledBack or Aborted rollout" in refused.output
    )
    assert "mesh-canary.io/retry" not in (cluster.rollout()["metadata"].get("annotations") or {})


def test_promote_full_skips_the_remaining_steps_at_the_next_analysis(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller()):
        wait_for("the first step", lambda: cluster.status().get("weights", {}).get("candidate") == 20)
        bare = cli(cluster, "rollout", "promote", "fraud-scorer", "-n", NS)
        promoted = cli(cluster, "rollout", "promote", "fraud-scorer", "--full", "-n", NS)
        assert promoted.exit_code == 0, promoted.output
        wait_for("the promotion", phase_is(cluster, "Succeeded"))
        late = cli(cluster, "rollout", "promote", "fraud-scorer", "--full", "-n", NS)
    assert bare.exit_code == 2 and "promote needs --full" in bare.output
    # 50% was skipped; the 60 s minimum step duration did not hold it.
    assert cluster.vs_history() == [[100, 0], [80, 20], [0, 100]]
    assert "promote --full" in cluster.status()["reason"]
    assert late.exit_code == 2 and "no rollout in progress" in late.output


def test_promote_full_never_promotes_a_candidate_whose_check_fails(cluster: Cluster) -> None:
    cluster.metrics["2.0"] = metrics = Metrics()
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller()):
        wait_for("the first step", lambda: cluster.vs_weights() == [80, 20])
        metrics.error_rate = 0.4
        cli(cluster, "rollout", "promote", "fraud-scorer", "--full", "-n", NS, "--no-wait")
        wait_for("the rollback", phase_is(cluster, "RolledBack"))
    assert [0, 100] not in cluster.vs_history() and cluster.vs_weights() == [100, 0]


def test_a_start_whose_stable_is_no_longer_live_is_refused_and_next_swaps_them(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    with running(cluster.controller()):
        ok = cli(cluster, "rollout", "start", "-f", policy_file(tmp_path, "2.0"), "--wait")
        assert ok.exit_code == 0, ok.output
        assert cluster.vs_weights() == [0, 100]
        # The old mistake: the next version in the candidate's place, stable still 1.0.
        wrong = cli(cluster, "rollout", "start", "-f", policy_file(tmp_path, "3.0"))
        assert wrong.exit_code == 2
        assert (
            "its stable 1.0 is no longer the live version" in wrong.output and "rollout next" in wrong.output
        )
        assert cluster.rollout()["spec"]["candidate"]["version"] == "2.0" and cluster.vs_weights() == [0, 100]
        # Re-applying what is there is not a start: never refused.
        same = cli(cluster, "rollout", "start", "-f", policy_file(tmp_path, "2.0"))
        assert same.exit_code == 0 and "unchanged" in same.output
        nxt = cli(cluster, "rollout", "next", "fraud-scorer", "--candidate", "3.0", "-n", NS)
        assert nxt.exit_code == 0, nxt.output
        assert "configured" in nxt.output and "stable 2.0, candidate 3.0" in nxt.output
        wait_for("the next promotion", lambda: cluster.status().get("candidateVersion") == "3.0")
        wait_for("the next promotion", phase_is(cluster, "Succeeded"))
    spec = cluster.rollout()["spec"]
    assert (spec["stable"]["version"], spec["stable"]["destination"]["subset"]) == ("2.0", "v2")
    assert (spec["candidate"]["version"], spec["candidate"]["destination"]["subset"]) == ("3.0", "v1")
    # The next rollout moved traffic from v2 (now stable) to v1 step by step: never back at once.
    assert cluster.vs_history()[-4:] == [[0, 100], [20, 80], [50, 50], [100, 0]]


def test_next_refuses_a_rollout_that_was_not_promoted(cluster: Cluster) -> None:
    cluster.add_rollout(model_rollout(canary=SLOW))
    with running(cluster.controller()):
        wait_for("the first step", lambda: cluster.status().get("weights", {}).get("candidate") == 20)
        refused = cli(cluster, "rollout", "next", "fraud-scorer", "--candidate", "3.0", "-n", NS)
    assert refused.exit_code == 2 and "fraud-scorer is Progressing" in refused.output
    assert cluster.rollout()["spec"]["candidate"]["version"] == "2.0"


def test_next_of_a_policy_file_prints_the_swapped_policy(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    path = policy_file(tmp_path, "2.0")
    out = tmp_path / "next.yaml"
    result = cli(cluster, "rollout", "next", "-f", path, "--candidate", "3.0", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["spec"]["stable"] == {
        "destination": {"host": "fraud-scorer", "subset": "v2"},
        "version": "2.0",
    }
    assert doc["spec"]["candidate"]["version"] == "3.0"
    assert CliRunner().invoke(main, ["validate", str(out)]).exit_code == 0
    same = cli(cluster, "rollout", "next", "-f", path, "--candidate", "2.0")
    assert same.exit_code == 2 and "is the version just promoted" in same.output
    printed = cli(cluster, "rollout", "next", "-f", path, "--candidate", "3.0", "-o", "json")
    check_output(_json(printed), "modelRollout")


def all_on_the_candidate(cluster: Cluster) -> None:
    """The VirtualService as a promotion of 2.0 (subset v2) left it, written by someone else."""
    vs = cluster.custom.get_namespaced_custom_object(*VS, NS, "virtualservices", "fraud-scorer")
    for route, weight in zip(vs["spec"]["http"][1]["route"], (0, 100), strict=True):
        route["weight"] = weight
    cluster.custom.replace_namespaced_custom_object(*VS, NS, "virtualservices", "fraud-scorer", vs)


def test_run_refuses_a_policy_whose_stable_is_no_longer_live(
    cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    """The standalone path (`mesh-canary run` writing the VirtualService itself)."""
    all_on_the_candidate(cluster)
    state = tmp_path / "st.json"
    args = ["run", "-f", policy_file(tmp_path, "3.0"), "--backend", "istio", "--state", str(state)]
    result = cli(cluster, *args, "--prometheus", "http://127.0.0.1:9", "-o", "json")
    assert result.exit_code == 2, result.output
    assert "its stable 1.0 is no longer the live version" in result.stderr
    assert cluster.vs_history() == [[100, 0], [0, 100]] and not state.exists()  # nothing written since


def test_the_controller_refuses_to_start_a_spec_whose_stable_is_no_longer_live(cluster: Cluster) -> None:
    """A spec applied by kubectl (not `rollout start`) meets the same check in the runner."""
    all_on_the_candidate(cluster)
    cluster.add_rollout(model_rollout(candidate="3.0"))
    with running(cluster.controller()):
        ready = wait_for(
            "the Ready=False condition",
            lambda: next(
                (
                    c
                    for c in cluster.status().get("conditions", [])
                    if c["type"] == "Ready" and c["status"] == "False"
                ),
                None,
            ),
        )
    assert "its stable 1.0 is no longer the live version" in ready["message"]
    assert cluster.vs_history() == [[100, 0], [0, 100]] and cluster.writes == []
