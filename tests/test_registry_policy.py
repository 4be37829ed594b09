"""Policy fields for KServe and the model registry: one clear sentence per problem, and the
schema's enums read from the registries (routers, model registries)."""

from __future__ import annotations

import pytest

from mesh_canary.core.model import RegistrySpec
from mesh_canary.core.policy import PolicyError, load_policy_text, spec_schema
from mesh_canary.registry import REGISTRIES, parse_model_uri

HEAD = """
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {name: fraud-scorer, namespace: models}
spec:
"""


def load(body: str) -> object:
    return load_policy_text(HEAD + body)


def problems(body: str) -> str:
    with pytest.raises(PolicyError) as caught:
        load(body)
    return str(caught.value)


def test_an_inference_service_policy_with_registry_versions_loads_with_defaults() -> None:
    policy = load_policy_text(
        HEAD
        + """
  route: {kind: InferenceService, name: fraud-scorer}
  stable: {destination: {host: fraud-scorer-predictor-00001}, model: "models:/fraud-scorer@champion"}
  candidate: {destination: {host: fraud-scorer-predictor-00002}, model: "models:/fraud-scorer/7"}
  metrics: {profile: kserve}
  registry: {trackingUri: "http://mlflow.mlops:5000"}
"""
    )
    assert policy.registry == RegistrySpec(tracking_uri="http://mlflow.mlops:5000")
    assert policy.candidate.model == "models:/fraud-scorer/7"
    assert policy.candidate.metrics_version == "fraud-scorer-predictor-00002"
    assert policy.document["spec"]["registry"] == {
        "trackingUri": "http://mlflow.mlops:5000",
        "provider": "mlflow",
        "alias": "champion",
        "timeout": "10s",
    }


def test_what_an_inference_service_cannot_do_is_named() -> None:
    text = problems(
        """
  route: {kind: InferenceService, name: fraud-scorer, rules: [primary]}
  strategy: blueGreen
  stable: {destination: {host: scorer, subset: v1}}
  candidate: {destination: {host: fraud-scorer-predictor-00002}}
  fallback: {destination: {host: fraud-scorer-predictor-00000}}
"""
    )
    assert "spec.route.rules: an InferenceService has no rules to choose; leave rules out" in text
    assert (
        "spec.stable.destination.subset: an InferenceService's versions are its predictor revisions" in text
    )
    assert "spec.fallback: an InferenceService canary has no third destination for a fallback" in text
    assert "spec.strategy: an InferenceService canary cannot mirror traffic: use canary" in text


def test_a_registry_version_needs_the_registry_and_a_model_uri() -> None:
    text = problems(
        """
  stable: {destination: {host: scorer, subset: v1}}
  candidate: {destination: {host: scorer, subset: v2}, model: "models:/fraud-scorer@challenger"}
"""
    )
    assert (
        "spec.candidate.model: names a model registry version, but spec.registry (trackingUri) is not set"
        in text
    )
    text = problems(
        """
  stable: {destination: {host: scorer, subset: v1}}
  candidate: {destination: {host: scorer, subset: v2}, model: "runs:/abc/model"}
  registry: {trackingUri: "ftp://nowhere", alias: "two words"}
"""
    )
    assert (
        "spec.candidate.model" in text
        and "spec.registry.trackingUri" in text
        and "spec.registry.alias" in text
    )


def test_the_schema_offers_exactly_the_registrys_providers() -> None:
    enum = spec_schema()["properties"]["registry"]["properties"]["provider"]["enum"]
    assert sorted(enum) == sorted(REGISTRIES)


def test_model_uris() -> None:
    assert parse_model_uri("models:/fraud-scorer@challenger").alias == "challenger"
    assert parse_model_uri("models:/fraud.scorer/12").version == "12"
