"""The ModelRollout CRD: generated from the policy schema, committed as generated, structural."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_canary.core.policy import crd_spec_schema, validate_document
from mesh_canary.kube.crd import render_crd, render_yaml
from tests.crd_schema import MODELROLLOUT_CRD, CrdValidator, structural_problems

POLICIES = sorted((Path(__file__).resolve().parent.parent / "policies").glob("*.yaml"))


def test_committed_crd_is_the_rendered_one() -> None:
    assert MODELROLLOUT_CRD.read_text() == render_yaml(), (
        "manifests/crd/modelrollouts.yaml is stale: run `python -m mesh_canary.kube.crd > manifests/crd/modelrollouts.yaml`"
    )


def test_spec_schema_is_the_policy_schema() -> None:
    version = render_crd()["spec"]["versions"][0]
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"] == crd_spec_schema()


def test_names_scope_subresource_and_printer_columns() -> None:
    crd = render_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "modelrollouts.mesh-canary.io"
    assert (spec["group"], spec["scope"]) == ("mesh-canary.io", "Namespaced")
    assert spec["names"]["kind"] == "ModelRollout" and spec["names"]["plural"] == "modelrollouts"
    assert spec["names"]["shortNames"] == ["mro"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Step"] == ".status.currentStep"
    assert columns["Weight"] == ".status.weights.candidate"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_schema_is_structural_as_an_api_server_requires() -> None:
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []
    # and the checker does catch what a real server refuses
    assert structural_problems(
        {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    )
    assert structural_problems({"type": "object", "properties": {"a": {"$ref": "#/x"}}})


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policies_are_valid_model_rollouts(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert CrdValidator(render_crd()).errors(doc) == []


def _policy() -> dict[str, Any]:
    return dict(yaml.safe_load((POLICIES[0].parent / "fraud-scorer-canary.yaml").read_text()))


def _broken(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(_policy())
    spec = doc["spec"]
    if change == "unknown field":
        spec["canary"]["stepz"] = [1]
    elif change == "weight above 100":
        spec["canary"]["steps"] = [5, 150]
    elif change == "wrong type":
        spec["analysis"]["minRequests"] = "many"
    elif change == "bad strategy":
        spec["strategy"] = "yolo"
    elif change == "no stable":
        del spec["stable"]
    elif change == "bad duration":
        spec["canary"]["minStepDuration"] = "1 minute"
    return doc


@pytest.mark.parametrize(
    "change", ["unknown field", "weight above 100", "wrong type", "bad strategy", "no stable", "bad duration"]
)
def test_the_crd_and_the_cli_reject_the_same_mistakes(change: str) -> None:
    doc = _broken(change)
    assert CrdValidator(render_crd()).errors(doc), f"the CRD accepts a policy with {change}"
    assert validate_document(doc), f"mesh-canary validate accepts a policy with {change}"


def test_status_accepts_what_the_controller_writes_and_keeps_unknown_fields() -> None:
    doc = _policy()
    doc["status"] = {
        "phase": "Progressing",
        "currentStep": 2,
        "weights": {"stable": 75, "candidate": 25, "fallback": 0, "mirrorPercent": 0},
        "conditions": [
            {
                "type": "Progressing",
                "status": "True",
                "reason": "StepPassed",
                "message": "ok",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "checks": [{"name": "errorRate", "verdict": "pass", "estimate": 0.001}],
        "rollout": {"anything": {"the": "engine saves"}},
        "history": [{"outcome": "promoted"}],
        "startedAt": "2026-01-01T00:00:00Z",
        "somethingNew": True,
    }
    validator = CrdValidator(render_crd())
    assert validator.errors(doc) == []
    doc["status"]["currentStep"] = "two"
    assert [p for p, _ in validator.errors(doc)] == ["status.currentStep"]
