"""The KServe example (manifests/kserve/): valid against KServe's CRD and ours, and it fits together."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from mesh_canary.core.policy import load_policy, validate_document
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.routing import router_name_for
from mesh_canary.routing.kserve import NOT_PROPAGATED, read_weights
from tests.crd_schema import MODELROLLOUT_CRD, REPO, validator_for
from tests.test_manifests import MANIFESTS, kustomize

KSERVE_CRD = REPO / "tests" / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml"


@pytest.fixture(scope="module")
def example() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in kustomize(MANIFESTS / "kserve")}


def test_the_example_is_valid_for_kserves_crd_and_ours(example: dict[tuple[str, str], Any]) -> None:
    assert set(example) == {
        ("Namespace", "models"),
        ("InferenceService", "fraud-scorer"),
        ("ModelRollout", "fraud-scorer"),
    }
    assert validator_for(KSERVE_CRD).errors(example["InferenceService", "fraud-scorer"]) == []
    rollout = example["ModelRollout", "fraud-scorer"]
    assert validator_for(MODELROLLOUT_CRD).errors(rollout) == []
    assert validate_document(rollout) == []


def test_the_example_fits_together(example: dict[tuple[str, str], Any]) -> None:
    policy = load_policy(example["ModelRollout", "fraud-scorer"])
    isvc = example["InferenceService", "fraud-scorer"]
    assert router_name_for(policy) == "kserve" and policy.metrics.profile == "kserve"
    assert (policy.route.name, policy.route.namespace) == (
        isvc["metadata"]["name"],
        isvc["metadata"]["namespace"],
    )
    assert read_weights(isvc) == ALL_STABLE  # the new revision starts with no traffic
    # Knative's metrics carry the revision name: the policy's metrics versions are the revisions.
    for version in (policy.stable, policy.candidate):
        assert version.metrics_version == version.destination.host
    assert policy.registry is not None and policy.candidate.model == "models:/fraud-scorer@challenger"


def test_kserve_is_told_not_to_copy_our_annotations_onto_revisions() -> None:
    config = yaml.safe_load((MANIFESTS / "kserve" / "inferenceservice-config.yaml").read_text())
    assert (config["metadata"]["name"], config["metadata"]["namespace"]) == (
        "inferenceservice-config",
        "kserve",
    )
    listed = json.loads(config["data"]["inferenceService"])["serviceAnnotationDisallowedList"]
    assert sorted(listed) == sorted(NOT_PROPAGATED)
