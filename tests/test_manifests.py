"""The manifests: kustomize renders them, RBAC is least privilege, the example is valid and consistent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh_canary.cli import controller as controller_command
from mesh_canary.core.policy import load_policy, validate_document
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.kube.crd import render_crd
from mesh_canary.routing.istio_patch import RouteTargets, managed_route_indexes, read_weights
from tests.crd_schema import DESTINATIONRULE_CRD, MODELROLLOUT_CRD, VIRTUALSERVICE_CRD, validator_for

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
EXAMPLE = MANIFESTS / "examples" / "fraud-scorer"
SYSTEM_NS = "mesh-canary-system"


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl is not installed (it renders kustomize): see https://kubernetes.io/docs/tasks/tools/"
        )
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def installed() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in kustomize(MANIFESTS)}


@pytest.fixture(scope="module")
def example() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in kustomize(EXAMPLE)}


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_install_renders_the_expected_objects(installed: dict[tuple[str, str], Any]) -> None:
    assert set(installed) == {
        ("Namespace", SYSTEM_NS),
        ("CustomResourceDefinition", "modelrollouts.mesh-canary.io"),
        ("ServiceAccount", "mesh-canary-controller"),
        ("ClusterRole", "mesh-canary-controller"),
        ("ClusterRoleBinding", "mesh-canary-controller"),
        ("Role", "mesh-canary-leader-election"),
        ("RoleBinding", "mesh-canary-leader-election"),
        ("Deployment", "mesh-canary-controller"),
        ("Service", "mesh-canary-controller-metrics"),
    }
    for (kind, _), obj in installed.items():
        if kind not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == SYSTEM_NS, kind
    assert (
        installed["CustomResourceDefinition", "modelrollouts.mesh-canary.io"]["spec"] == render_crd()["spec"]
    )


def test_rbac_is_least_privilege(installed: dict[tuple[str, str], Any]) -> None:
    cluster = installed["ClusterRole", "mesh-canary-controller"]["rules"]
    assert rule_set(cluster) == {
        (group, plural, verb)
        for group, plural in (
            ("networking.istio.io", "virtualservices"),
            ("gateway.networking.k8s.io", "httproutes"),
        )
        for verb in ("get", "list", "watch", "patch", "update")
    } | {("serving.kserve.io", "inferenceservices", verb) for verb in ("get", "list", "watch", "patch")} | {
        ("mesh-canary.io", "modelrollouts", verb) for verb in ("get", "list", "watch", "patch")
    } | {("mesh-canary.io", "modelrollouts/status", verb) for verb in ("get", "update", "patch")} | {
        (group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")
    }
    role = installed["Role", "mesh-canary-leader-election"]
    assert role["metadata"]["namespace"] == SYSTEM_NS  # leases only in the controller's namespace
    assert rule_set(role["rules"]) == {
        ("coordination.k8s.io", "leases", v) for v in ("get", "list", "create", "update", "patch")
    }
    for kind, name, role_kind in [
        ("ClusterRoleBinding", "mesh-canary-controller", "ClusterRole"),
        ("RoleBinding", "mesh-canary-leader-election", "Role"),
    ]:
        binding = installed[kind, name]
        assert binding["roleRef"]["kind"] == role_kind
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "mesh-canary-controller", "namespace": SYSTEM_NS}
        ]
    assert not [
        k for k in installed if k[0] in ("Role", "ClusterRole") and "*" in yaml.safe_dump(installed[k])
    ]


def test_controller_deployment(installed: dict[tuple[str, str], Any]) -> None:
    deployment = installed["Deployment", "mesh-canary-controller"]
    pod = deployment["spec"]["template"]["spec"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pod["serviceAccountName"] == "mesh-canary-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/mesh-canary/mesh-canary:0.1.0"
    # The probes and Prometheus reach the pod from outside: the loopback default is overridden, explicitly.
    assert container["args"] == [
        "controller",
        "--leader-elect",
        "--metrics-addr",
        ":8080",
        "--bind-address",
        "0.0.0.0",
    ]
    controller_options(container["args"])  # options the CLI knows, values it accepts
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == 8080
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"]["drop"] == ["ALL"]


def controller_options(args: list[str]) -> dict[str, Any]:
    """What `mesh-canary ARGS` would run the controller with (click parses them; nothing starts)."""
    assert args[0] == "controller"
    ctx = controller_command.make_context("controller", list(args[1:]))
    return dict(ctx.params)


@pytest.fixture(scope="module")
def namespaced() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in kustomize(MANIFESTS / "namespaced")}


def test_namespaced_install_grants_rights_only_in_the_watched_namespaces(
    installed: dict[tuple[str, str], Any], namespaced: dict[tuple[str, str], Any]
) -> None:
    assert set(namespaced) == {
        ("Namespace", SYSTEM_NS),
        ("CustomResourceDefinition", "modelrollouts.mesh-canary.io"),
        ("ServiceAccount", "mesh-canary-controller"),
        ("Role", "mesh-canary-controller"),
        ("RoleBinding", "mesh-canary-controller"),
        ("Role", "mesh-canary-leader-election"),
        ("RoleBinding", "mesh-canary-leader-election"),
        ("Deployment", "mesh-canary-controller"),
        ("Service", "mesh-canary-controller-metrics"),
    }
    assert not [k for k in namespaced if k[0].startswith("Cluster")]  # nothing cluster-wide
    role = namespaced["Role", "mesh-canary-controller"]
    binding = namespaced["RoleBinding", "mesh-canary-controller"]
    # The same rights as the cluster-wide install, in the watched namespace only.
    assert rule_set(role["rules"]) == rule_set(installed["ClusterRole", "mesh-canary-controller"]["rules"])
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == "models"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "mesh-canary-controller", "namespace": SYSTEM_NS}
    ]
    # The controller watches exactly the namespaces that have the Role.
    [container] = namespaced["Deployment", "mesh-canary-controller"]["spec"]["template"]["spec"]["containers"]
    options = controller_options(container["args"])
    watched = {n for group in options["namespaces"] for n in group.split(",")}
    roles = {d["metadata"]["namespace"] for (kind, _), d in namespaced.items() if kind == "Role"} - {
        SYSTEM_NS
    }
    assert watched == roles == {"models"}
    # The Lease stays in the controller's own namespace ($POD_NAMESPACE), where its Role is.
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert namespaced["Role", "mesh-canary-leader-election"]["metadata"]["namespace"] == SYSTEM_NS
    assert options["leader_elect"] and options["bind_address"] == "0.0.0.0"
    # The example rollout lives in the watched namespace.
    rollouts = [d for d in kustomize(EXAMPLE) if d["kind"] == "ModelRollout"]
    assert rollouts and all(d["metadata"]["namespace"] in watched for d in rollouts)


def test_example_istio_objects_are_valid_against_istios_crds(example: dict[tuple[str, str], Any]) -> None:
    assert validator_for(VIRTUALSERVICE_CRD).errors(example["VirtualService", "fraud-scorer"]) == []
    assert validator_for(DESTINATIONRULE_CRD).errors(example["DestinationRule", "fraud-scorer"]) == []


def test_example_model_rollout_is_valid_for_the_crd_and_the_cli(example: dict[tuple[str, str], Any]) -> None:
    rollout = example["ModelRollout", "fraud-scorer"]
    assert validator_for(MODELROLLOUT_CRD).errors(rollout) == []
    assert validate_document(rollout) == []


def test_example_fits_together(example: dict[tuple[str, str], Any]) -> None:
    rollout = load_policy(example["ModelRollout", "fraud-scorer"])
    vs = example["VirtualService", "fraud-scorer"]
    targets = RouteTargets.from_policy(rollout)
    assert [vs["spec"]["http"][i]["name"] for i in managed_route_indexes(vs, targets)] == ["primary"]
    assert read_weights(vs, targets) == ALL_STABLE  # starts 100/0
    assert rollout.virtual_service.namespace == vs["metadata"]["namespace"]

    subsets = {s["name"]: s["labels"] for s in example["DestinationRule", "fraud-scorer"]["spec"]["subsets"]}
    service = example["Service", "fraud-scorer"]
    for version in (rollout.stable, rollout.candidate):
        assert version.destination.host == service["metadata"]["name"] == vs["spec"]["hosts"][0]
        assert version.destination.subset is not None
        deployment = example["Deployment", f"fraud-scorer-{version.destination.subset}"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert subsets[version.destination.subset].items() <= pod_labels.items()
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        # the version label Istio reports (destination_version) is what the policy's metrics expect
        assert pod_labels["version"] == version.metrics_version
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert "http" in ports  # Istio picks the protocol from the port name


@pytest.mark.parametrize("install", ["", "namespaced"])
def test_mlflow_registry_component_adds_the_registry_flags_with_the_token_from_a_secret(
    install: str, tmp_path: Path
) -> None:
    # The install with the component enabled, as the commented `components:` lines do.
    base = MANIFESTS / install
    component = MANIFESTS / "components" / "mlflow-registry"
    commented = (base / "kustomization.yaml").read_text()
    assert f"#   - {os.path.relpath(component, base)}\n" in commented
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(base, tmp_path)],
                "components": [os.path.relpath(component, tmp_path)],
            }
        )
    )
    plain = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(base)}
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in kustomize(tmp_path)}
    assert set(rendered) == set(plain)  # only the Deployment changes
    [container] = rendered["Deployment", "mesh-canary-controller"]["spec"]["template"]["spec"]["containers"]
    [before] = plain["Deployment", "mesh-canary-controller"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][: len(before["args"])] == before["args"]
    options = controller_options(container["args"])  # options the CLI knows
    assert options["allowed_registries"] == ("http://mlflow.mlflow.svc.cluster.local:5000",)
    token_env = options["registry_token_env"]
    env = {e["name"]: e for e in container["env"]}
    # The variable the controller reads is set, from a Secret, never as a literal value.
    assert "value" not in env[token_env]
    assert env[token_env]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-registry-token", "key": "token"}
