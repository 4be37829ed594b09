"""kubectl against the API stand-in: apply the CRD and the example, see the printer columns.

The stand-in answers ``Accept: application/json;as=Table`` with a Table built from the
CRD's additionalPrinterColumns, as a real API server does, so what is checked here is the
output ``kubectl get modelrollouts`` prints in a cluster.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator

import kubernetes.client
import pytest

from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_fixtures import kubectl
from tests.kube_standin import KubeStandIn

pytestmark = pytest.mark.integration

EXAMPLE = MODELROLLOUT_CRD.parent.parent / "examples" / "fraud-scorer"


@pytest.fixture
def istio_only(tmp_path: pathlib.Path) -> Iterator[KubeStandIn]:
    """A stand-in with Istio's CRDs only: kubectl installs the ModelRollout CRD itself."""
    with KubeStandIn([load_yaml(path) for path in ISTIO_CRDS], workdir=tmp_path) as api:
        yield api


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def test_kubectl_applies_the_crd_and_the_example_and_prints_the_columns(istio_only: KubeStandIn) -> None:
    api = istio_only
    out = kubectl(api, "apply", "--validate=false", "-f", str(MODELROLLOUT_CRD)).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/modelrollouts.mesh-canary.io created" in out
    for name in ("virtualservice.yaml", "destinationrule.yaml", "modelrollout.yaml"):
        kubectl(api, "apply", "--validate=false", "-f", str(EXAMPLE / name))

    # before the controller writes a status: the columns are there, empty
    rows = table(kubectl(api, "get", "modelrollouts", "-n", "models").stdout)
    assert rows[0] == ["NAME", "PHASE", "STEP", "WEIGHT", "AGE"]
    assert rows[1][0] == "fraud-scorer"

    # what the controller writes, through the status subresource
    custom = kubernetes.client.CustomObjectsApi(api.api_client())
    custom.patch_namespaced_custom_object_status(
        "mesh-canary.io",
        "v1alpha1",
        "models",
        "modelrollouts",
        "fraud-scorer",
        {"status": {"phase": "Progressing", "currentStep": 1, "weights": {"stable": 90, "candidate": 10}}},
    )
    rows = table(kubectl(api, "get", "mro", "-n", "models").stdout)  # the short name
    assert rows[1][:4] == ["fraud-scorer", "Progressing", "1", "10"]
    assert re.fullmatch(r"\d+s", rows[1][4])
    wide = table(kubectl(api, "get", "modelrollouts", "-A", "-o", "wide").stdout)
    assert wide[0] == ["NAMESPACE", "NAME", "PHASE", "STEP", "WEIGHT", "CANDIDATE", "AGE"]
    assert wide[1][:6] == ["models", "fraud-scorer", "Progressing", "1", "10", "1.5.0"]

    # a re-apply of the unchanged spec keeps the status and the generation
    kubectl(api, "apply", "--validate=false", "-f", str(EXAMPLE / "modelrollout.yaml"))
    stored = custom.get_namespaced_custom_object(
        "mesh-canary.io", "v1alpha1", "models", "modelrollouts", "fraud-scorer"
    )
    assert stored["status"]["phase"] == "Progressing"
    assert stored["metadata"]["generation"] == 1

    vs = table(kubectl(api, "get", "vs", "-n", "models").stdout)
    assert vs[0] == ["NAME", "GATEWAYS", "HOSTS", "AGE"] and vs[1][0] == "fraud-scorer"


def test_kubectl_apply_of_an_invalid_rollout_is_refused_with_the_field(
    kube_api: KubeStandIn, tmp_path: pathlib.Path
) -> None:
    text = (
        (EXAMPLE / "modelrollout.yaml").read_text().replace("steps: [5, 10, 25, 50, 100]", "steps: [5, 150]")
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = kubectl(kube_api, "apply", "--validate=false", "-f", str(bad), ok=False)
    assert result.returncode != 0
    assert 'The ModelRollout "fraud-scorer" is invalid' in result.stderr  # kubectl's wording from the Status
    assert "spec.canary.steps[1]" in result.stderr
