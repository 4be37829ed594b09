"""A real ``mesh-canary run`` process rolls back a KServe InferenceService and tells MLflow.

Real parts: the installed ``mesh-canary`` console script (a subprocess), the Kubernetes API
stand-in holding KServe's own InferenceService CRD, a real ``mlflow server`` (sqlite), and a
Prometheus address where nothing listens: no metrics can be read, which is never a pass, so
after ``noDataTimeout`` the rollout rolls back. Then: canaryTrafficPercent is 0 with the
rollback record, the candidate's MLflow version is tagged rolled-back with the reason, the
champion alias has not moved, and the state file records the resolved versions and the
RegistryUpdated condition.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from mesh_canary.localmesh.prometheus import free_port
from mesh_canary.routing.kube_route import ANNOTATION_ROLLBACK
from tests.crd_schema import load_yaml
from tests.integration.test_kserve_router import KSERVE_CRD, NEW, NS, OLD, RES, canary_field, create, live
from tests.kube_standin import KubeStandIn
from tests.mlflow_server import Mlflow
from tests.mlflow_server import mlflow_server as mlflow_server  # the fixture

pytestmark = pytest.mark.e2e

MESH_CANARY = str(pathlib.Path(sys.executable).parent / "mesh-canary")


def test_a_kserve_rollout_that_cannot_be_judged_rolls_back_and_tags_the_mlflow_version(
    tmp_path: pathlib.Path, mlflow_server: Mlflow
) -> None:
    model = "fraud-scorer-e2e"
    mlflow_server.model(model, 2, {"champion": "1", "challenger": "2"})
    policy = tmp_path / "rollout.yaml"
    policy.write_text(f"""
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {{name: fraud-scorer, namespace: {NS}}}
spec:
  route: {{kind: InferenceService, name: fraud-scorer}}
  stable: {{destination: {{host: {OLD}}}, model: "models:/{model}@champion"}}
  candidate: {{destination: {{host: {NEW}}}, model: "models:/{model}@challenger"}}
  canary: {{steps: [10, 50, 100], minStepDuration: 1s, maxStepDuration: 1m}}
  analysis: {{interval: 1s, noDataTimeout: 3s}}
  metrics: {{profile: kserve, timeout: 1s}}
  registry: {{trackingUri: "{mlflow_server.url}"}}
""")
    state = tmp_path / "state.json"
    with KubeStandIn([load_yaml(KSERVE_CRD)], workdir=tmp_path / "kube") as kube:
        create(kube)
        done = subprocess.run(
            [
                MESH_CANARY,
                "run",
                "-f",
                str(policy),
                "--kubeconfig",
                str(kube.kubeconfig_path),
                "--prometheus",
                f"http://127.0.0.1:{free_port()}",
                "--state",
                str(state),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 3, done.stderr[-3000:]  # rolled back
        after = live(kube)
        written = [canary_field(v) for v in kube.stored(RES, NS, "fraud-scorer")]
    assert 10 in written and written[-1] == 0, written  # the first step went out, then the rollback
    assert canary_field(after) == 0
    assert json.loads(after["metadata"]["annotations"][ANNOTATION_ROLLBACK])["reason"]
    tags = mlflow_server.tags(model, "2")
    assert tags["mesh-canary.result"] == "rolled-back" and tags["mesh-canary.rollout"] == f"{NS}/fraud-scorer"
    assert tags["mesh-canary.reason"]
    assert mlflow_server.alias(model, "champion") == "1"
    saved = json.loads(state.read_text())
    assert saved["phase"] == "RolledBack"
    assert saved["modelRegistry"]["versions"]["candidate"] == {
        "uri": f"models:/{model}@challenger",
        "name": model,
        "version": "2",
    }
    assert saved["modelRegistry"]["condition"]["status"] == "True"
    assert saved["modelRegistry"]["condition"]["reason"] == "Tagged"
