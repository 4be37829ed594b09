"""The controller with the MLflow model registry: a real ``mlflow server`` (sqlite backend,
tests/mlflow_server.py), the Kubernetes API stand-in through the official client, the real
IstioRouter, status store and Event notifier (tests/integration/test_controller.py); only the
metrics are a fake MetricsSource, so that a test decides whether a candidate is healthy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mesh_canary.kube.status import condition
from mesh_canary.localmesh.prometheus import free_port
from tests.conftest import NS, model_rollout
from tests.faults.test_controller import http_server, send_json
from tests.integration.test_controller import HOLD, Cluster, Metrics, phase_is, running
from tests.integration.test_controller import cluster as cluster  # the fixture
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.mlflow_server import Mlflow, start_mlflow
from tests.mlflow_server import mlflow_server as mlflow_server  # the fixture
from tests.mlflow_server import model as model  # the fixture
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

MR = "mesh-canary.io/v1alpha1/modelrollouts"


def registry_rollout(
    url: str, model: str, candidate_alias: str = "challenger", **spec: Any
) -> dict[str, Any]:
    doc = model_rollout(stable={"model": f"models:/{model}@champion"}, registry={"trackingUri": url}, **spec)
    doc["spec"]["candidate"]["model"] = f"models:/{model}@{candidate_alias}"
    return doc


def registry_condition(cluster: Cluster, type_: str = "RegistryUpdated") -> dict[str, Any]:
    return condition(cluster.status(), type_) or {}


def reason_is(cluster: Cluster, reason: str, type_: str = "RegistryUpdated") -> Any:
    return lambda: registry_condition(cluster, type_).get("reason") == reason


def test_a_promotion_moves_the_alias_to_the_version_resolved_at_start_even_across_a_restart(
    cluster: Cluster, mlflow_server: Mlflow, model: str
) -> None:
    cluster.add_vs()
    steps = {"steps": [20, 50, 100], "minStepDuration": "2s", "maxStepDuration": "60s"}
    cluster.add_rollout(registry_rollout(mlflow_server.url, model, canary=steps))
    with running(cluster.controller(allowed_registries=[mlflow_server.url])):
        wait_for("the first step", lambda: cluster.vs_weights() == [80, 20])
    status = cluster.status()
    assert status["modelRegistry"]["versions"]["candidate"] == {
        "uri": f"models:/{model}@challenger",
        "name": model,
        "version": "2",
    }
    assert status["modelRegistry"]["versions"]["stable"]["version"] == "1"
    resolved = condition(status, "RegistryResolved")
    assert resolved is not None and resolved["status"] == "True" and "is version 2" in resolved["message"]
    assert resolved["observedGeneration"] == cluster.rollout()["metadata"]["generation"]

    # Someone moves the alias while the controller is down: the restarted one keeps version 2.
    mlflow_server.post("registered-models/alias", name=model, alias="challenger", version="3")
    with running(cluster.controller(allowed_registries=[mlflow_server.url])):
        wait_for("promotion", phase_is(cluster, "Succeeded"), timeout_s=60)
        wait_for("the registry update", reason_is(cluster, "AliasMoved"), timeout_s=60)
    assert mlflow_server.alias(model, "champion") == "2", "the version judged, not the alias's new one"
    tags = mlflow_server.tags(model, "2")
    assert tags["mesh-canary.rollout"] == f"{NS}/fraud-scorer"
    assert tags["mesh-canary.result"] == "promoted"
    assert "mesh-canary.time" in tags and mlflow_server.tags(model, "3") == {}
    updated = registry_condition(cluster)
    assert updated["status"] == "True" and f"alias champion moved to {model} version 2" in updated["message"]
    assert set(updated) >= {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}
    assert cluster.status()["modelRegistry"]["versions"]["candidate"]["version"] == "2"


def test_a_rollback_tags_the_version_with_the_reason_and_leaves_the_alias(
    cluster: Cluster, mlflow_server: Mlflow, model: str
) -> None:
    cluster.add_vs()
    cluster.metrics["2.0"] = Metrics()
    cluster.metrics["2.0"].error_rate = 0.3
    cluster.add_rollout(registry_rollout(mlflow_server.url, model))
    with running(cluster.controller(allowed_registries=[mlflow_server.url])):
        wait_for("the rollback", phase_is(cluster, "RolledBack"))
        wait_for("the registry update", reason_is(cluster, "Tagged"), timeout_s=60)
    assert cluster.vs_history() == [[100, 0], [80, 20], [100, 0]]
    assert mlflow_server.alias(model, "champion") == "1", "a rollback never moves the alias"
    tags = mlflow_server.tags(model, "2")
    assert tags["mesh-canary.result"] == "rolled-back"
    assert "errorRate" in tags["mesh-canary.reason"]
    updated = registry_condition(cluster)
    assert updated["status"] == "True" and "alias champion not moved" in updated["message"]


def test_a_registry_stopped_mid_rollout_never_delays_the_rollback_and_the_condition_says_so(
    cluster: Cluster, tmp_path: Path
) -> None:
    with start_mlflow(tmp_path) as server:
        server.model("scorer", 2, {"champion": "1", "challenger": "2"})
        cluster.add_vs()
        cluster.add_rollout(registry_rollout(server.url, "scorer", canary=HOLD))
        with running(cluster.controller(allowed_registries=[server.url])):
            wait_for("the first step", lambda: cluster.vs_weights() == [90, 10])
            server.stop()
            cluster.metrics["2.0"].error_rate = 0.3
            wait_for("the rollback", phase_is(cluster, "RolledBack"))
            assert cluster.vs_weights() == [100, 0]
            wait_for(
                "the registry update to give up", reason_is(cluster, "RegistryUnavailable"), timeout_s=90
            )
    assert cluster.vs_history() == [[100, 0], [90, 10], [100, 0]]
    updated = registry_condition(cluster)
    assert (
        updated["status"] == "False" and "could not tag the version of scorer version 2" in updated["message"]
    )
    shown = [condition(v.get("status") or {}, "RegistryUpdated") or {} for v in stored(cluster)]
    phases = [(v.get("status") or {}).get("phase") for v in stored(cluster)]
    first_rolled_back = phases.index("RolledBack")
    # The rollback was saved before the registry was even tried: nothing waited for it.
    assert shown[first_rolled_back].get("reason") == "RolloutInProgress"
    assert "Retrying" in [c.get("reason") for c in shown[first_rolled_back:]]


def test_an_alias_that_does_not_exist_yet_writes_nothing_and_the_start_is_retried_until_it_does(
    cluster: Cluster, mlflow_server: Mlflow, model: str
) -> None:
    cluster.add_vs()
    cluster.add_rollout(registry_rollout(mlflow_server.url, model, candidate_alias="next"))
    with running(cluster.controller(allowed_registries=[mlflow_server.url])):
        wait_for("the refusal", reason_is(cluster, "RegistryRefused", "RegistryResolved"))
        resolved = registry_condition(cluster, "RegistryResolved")
        assert resolved["status"] == "False" and "nothing was written; trying again in" in resolved["message"]
        assert f"models:/{model}@next could not be resolved" in resolved["message"]
        status = cluster.status()
        assert status["phase"] == "Pending" and "could not be resolved" in status["message"]
        assert "rollout" not in status
        assert cluster.writes == [] and cluster.vs_history() == [[100, 0]]
        assert "RegistryUnresolved" in [e[0] for e in cluster.events()]
        mlflow_server.post("registered-models/alias", name=model, alias="next", version="3")
        wait_for("promotion", phase_is(cluster, "Succeeded"), timeout_s=90)
        wait_for("the registry update", reason_is(cluster, "AliasMoved"), timeout_s=60)
    assert mlflow_server.alias(model, "champion") == "3"
    assert registry_condition(cluster, "RegistryResolved")["status"] == "True"
    assert [e[0] for e in cluster.events()].count("RegistryUnresolved") == 1


def test_a_registry_down_at_start_writes_nothing_and_says_so(cluster: Cluster) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cluster.add_vs()
    cluster.add_rollout(registry_rollout(url, "scorer"))
    with running(cluster.controller(allowed_registries=[url])):
        wait_for("the failure", reason_is(cluster, "RegistryUnavailable", "RegistryResolved"))
        wait_for(
            "a second try", lambda: "(try 2)" in registry_condition(cluster, "RegistryResolved")["message"]
        )
    assert cluster.status()["phase"] == "Pending"
    assert cluster.writes == [] and cluster.vs_history() == [[100, 0]]


def test_a_spec_chooses_neither_the_registry_nor_the_token(cluster: Cluster) -> None:
    cluster.add_vs()
    doc = registry_rollout("http://mlflow.elsewhere:5000", "scorer")
    doc["spec"]["registry"]["tokenFromEnv"] = "HOME"  # any of the controller's variables
    cluster.add_rollout(doc)
    with running(cluster.controller(allowed_registries=["http://mlflow.mlops:5000"])):
        wait_for("the refusal", phase_is(cluster, "Invalid"))
    valid = condition(cluster.status(), "PolicyValid") or {}
    assert valid["status"] == "False"
    assert (
        "'http://mlflow.elsewhere:5000' is not a model registry this controller may call" in valid["message"]
    )
    assert "spec.registry.tokenFromEnv" in valid["message"]
    assert cluster.writes == [] and cluster.vs_history() == [[100, 0]]


def test_the_controllers_token_is_sent_to_the_registry_and_shown_nowhere(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "registry-token-5d1c9e"
    monkeypatch.setenv("MC_TEST_REGISTRY_TOKEN", token)
    # A registry on 127.0.0.1 resolving every alias to version 7 (MLflow's own server has no
    # bearer-token auth to check): it records each request's headers.
    answer = {"model_version": {"name": "scorer", "version": "7"}}
    with http_server(lambda handler, rec: send_json(handler, answer)) as (url, seen):
        cluster.add_vs()
        cluster.add_rollout(registry_rollout(url, "scorer"))
        settings = {"allowed_registries": [url], "registry_token_env": "MC_TEST_REGISTRY_TOKEN"}
        with running(cluster.controller(**settings)):
            wait_for("the start", lambda: cluster.vs_weights() == [80, 20])
    assert seen.requests and {r[2].get("Authorization") for r in seen.requests} == {f"Bearer {token}"}
    assert cluster.status()["modelRegistry"]["versions"]["candidate"]["version"] == "7"
    assert token not in json.dumps(cluster.rollout())
    assert token not in json.dumps([list(e) for e in cluster.events()])


def stored(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.kube.stored(MR, NS, "fraud-scorer")
