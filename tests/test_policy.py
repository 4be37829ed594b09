"""The rollout policy: the examples load, defaults are filled, every mistake is named by its path."""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_canary.core.policy import (
    DEFAULT_CHECKS,
    PolicyError,
    Problem,
    crd_spec_schema,
    default_check_name,
    load_policy,
    load_policy_text,
    policy_schema,
    resource_document,
    spec_schema,
    validate_document,
    validate_text,
)
from mesh_canary.core.policy import schema as policy_schema_module
from tests.conftest import minimal_rollout

ROOT = Path(__file__).resolve().parent.parent
POLICIES = sorted((ROOT / "policies").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "data" / "invalid").glob("*.yaml"))

MINIMAL: dict[str, Any] = minimal_rollout()
HOSTILE = '"} or vector(1) #'


def minimal(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(spec)
    return doc


def with_checks(*checks: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return minimal(analysis={"checks": list(checks)}, **spec)


# --------------------------------------------------------------------------- examples and defaults


def test_the_example_policies_are_all_there() -> None:
    names = {p.name for p in POLICIES}
    assert {"fraud-scorer-canary.yaml", "minimal.yaml", "blue-green.yaml", "local-demo.yaml"} <= names


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_example_policy_loads_and_its_document_round_trips(path: Path) -> None:
    loaded = load_policy_text(path.read_text(), str(path))
    # The filled document is JSON, and loading it again gives the same policy.
    again = load_policy(json.loads(json.dumps(loaded.document)))
    assert again == loaded
    assert again.document == loaded.document


def test_a_ten_line_policy_loads_with_every_default() -> None:
    text = (ROOT / "policies" / "minimal.yaml").read_text()
    assert len(text.strip().splitlines()) <= 10
    p = load_policy_text(text)
    assert p.name == "fraud-scorer" and p.namespace == "default"
    assert p.virtual_service.name == "fraud-scorer"
    assert p.virtual_service.namespace == "default" and p.virtual_service.routes == ()
    assert (p.stable.version, p.stable.metrics_version) == ("v1", "v1")
    assert (p.candidate.version, p.candidate.metrics_version) == ("v2", "v2")
    assert p.fallback is None and p.strategy == "canary"
    assert p.canary.steps == (5, 10, 25, 50, 100)
    assert (p.canary.min_step_duration_s, p.canary.max_step_duration_s) == (60.0, 900.0)
    assert (p.blue_green.mirror_percent, p.blue_green.preview_duration_s) == (100, 600.0)
    assert p.blue_green.post_switch_window_s == 900.0
    a = p.analysis
    assert (a.interval_s, a.confidence, a.min_requests, a.no_data_timeout_s) == (30.0, 0.99, 100, 300.0)
    error_rate, latency = a.checks
    assert (error_rate.metric, error_rate.name) == ("errorRate", "errorRate")
    assert (error_rate.max_increase_ratio, error_rate.max, error_rate.max_increase) == (0.25, 0.05, None)
    assert (latency.metric, latency.name, latency.quantile) == ("latency", "latency-p99", 0.99)
    assert latency.max_increase_ratio == 0.2
    m = p.metrics
    assert (m.provider, m.profile, m.address) == (
        "prometheus",
        "istio",
        "http://prometheus.istio-system:9090",
    )
    assert (m.version_label, m.model_version_label, m.timeout_s) == ("destination_version", "version", 10.0)
    assert m.variables == {} and p.approval == "none" and p.notifications == ()


def test_the_filled_document_writes_every_default_in_camel_case() -> None:
    d = load_policy(minimal()).document
    assert d["metadata"]["namespace"] == "default"
    spec = d["spec"]
    assert spec["virtualService"] == {"name": "fraud-scorer", "namespace": "default", "routes": []}
    assert spec["stable"]["metricsVersion"] == "v1"
    assert spec["canary"] == {
        "steps": [5, 10, 25, 50, 100],
        "minStepDuration": "1m",
        "maxStepDuration": "15m",
    }
    assert spec["blueGreen"] == {
        "mirrorPercent": 100,
        "previewDuration": "10m",
        "postSwitchWindow": "15m",
        "holdbackPercent": 5,
    }
    assert spec["analysis"]["checks"] == [
        {**DEFAULT_CHECKS[0], "name": "errorRate"},
        {**DEFAULT_CHECKS[1], "name": "latency-p99"},
    ]
    assert spec["metrics"]["modelVersionLabel"] == "version" and spec["metrics"]["timeout"] == "10s"
    assert spec["gates"] == {"approval": "none"} and spec["notifications"] == []
    # The input is left as it was.
    assert "canary" not in MINIMAL["spec"]


def test_namespace_and_metrics_version_follow_what_is_written() -> None:
    doc = minimal(stable={"destination": {"host": "a"}, "version": "1.4.2"})
    doc["metadata"]["namespace"] = "models"
    p = load_policy(doc)
    assert p.virtual_service.namespace == "models"
    assert (p.stable.version, p.stable.metrics_version) == ("1.4.2", "1.4.2")
    doc["spec"]["virtualService"]["namespace"] = "mesh"
    assert load_policy(doc).virtual_service.namespace == "mesh"


def test_the_full_example_converts_units_and_names_its_checks() -> None:
    p = load_policy_text((ROOT / "policies" / "fraud-scorer-canary.yaml").read_text())
    checks = {c.name: c for c in p.analysis.checks}
    assert list(checks) == [
        "errorRate",
        "latency-p99",
        "latency-slower-than-250ms",
        "accuracy",
        "f1-fraud",
        "predictionDrift",
        "featureDrift-transaction_amount",
        "trafficShare",
        "conversion",
    ]
    assert checks["latency-p99"].max == 500.0  # ms
    assert checks["latency-slower-than-250ms"].slower_than_ms == 250.0
    assert checks["latency-slower-than-250ms"].max_increase == 0.01  # a share, not ms
    assert checks["accuracy"].min_labeled == 500
    assert checks["f1-fraud"].class_ == "fraud" and checks["f1-fraud"].min_labeled == 100
    assert checks["featureDrift-transaction_amount"].max_psi == 0.2
    assert checks["conversion"].query is not None and "{{ version }}" in checks["conversion"].query
    assert p.stable.metrics_version == "v1" and p.stable.version == "1.4.2"
    assert p.fallback is not None and p.fallback.host == "fraud-scorer-fallback"
    assert p.virtual_service.routes == ("primary",)
    (hook,) = p.notifications
    assert hook.url is None and hook.url_from_secret == {"name": "rollout-hooks", "key": "slack-url"}
    assert hook.format == "slack"


def test_the_local_demo_policy_is_what_the_demo_expects() -> None:
    p = load_policy_text((ROOT / "policies" / "local-demo.yaml").read_text())
    assert (p.metrics.provider, p.metrics.profile) == ("local", "envoy")
    assert (p.stable.destination.host, p.stable.version) == ("v1", "v1")
    assert (p.candidate.destination.host, p.candidate.version) == ("v2", "v2")
    assert p.virtual_service.name == "local"
    assert p.canary.steps == (10, 25, 50, 100)
    assert (p.canary.min_step_duration_s, p.canary.max_step_duration_s) == (5.0, 60.0)
    assert (p.analysis.interval_s, p.analysis.min_requests, p.analysis.no_data_timeout_s) == (1.0, 50, 20.0)
    by_metric = {c.metric: c for c in p.analysis.checks}
    assert (by_metric["errorRate"].max_increase, by_metric["errorRate"].max) == (0.02, 0.05)
    lat = by_metric["latency"]
    assert (lat.quantile, lat.max_increase_ratio, lat.max) == (0.99, 0.5, 500.0)
    assert (by_metric["accuracy"].max_decrease, by_metric["accuracy"].min_labeled) == (0.05, 50)
    assert by_metric["predictionDrift"].max_psi == 0.25


def test_blue_green_example() -> None:
    p = load_policy_text((ROOT / "policies" / "blue-green.yaml").read_text())
    assert p.strategy == "blueGreen" and p.approval == "beforePromotion"
    assert p.stable.destination.subset is None and p.stable.metrics_version == "2024.06"
    assert p.notifications[0].url == "https://hooks.example.com/rollouts"


@pytest.mark.parametrize(
    ("check", "name"),
    [
        ({"metric": "latency", "quantile": 0.99}, "latency-p99"),
        ({"metric": "latency", "quantile": 0.999}, "latency-p99.9"),
        ({"metric": "latency", "quantile": 0.5}, "latency-p50"),
        ({"metric": "latency", "slowerThan": "250ms"}, "latency-slower-than-250ms"),
        ({"metric": "latency", "slowerThan": "1s"}, "latency-slower-than-1000ms"),
        ({"metric": "latency", "slowerThan": 100}, "latency-slower-than-100ms"),
        ({"metric": "f1", "class": "fraud"}, "f1-fraud"),
        ({"metric": "recall", "class": "fraud"}, "recall-fraud"),
        ({"metric": "featureDrift", "feature": "age"}, "featureDrift-age"),
        ({"metric": "trafficShare"}, "trafficShare"),
    ],
)
def test_default_check_names(check: dict[str, Any], name: str) -> None:
    assert default_check_name(check) == name


def test_a_latency_bound_may_be_a_number_of_milliseconds_or_a_duration() -> None:
    doc = with_checks(
        {"metric": "latency", "quantile": 0.9, "max": 250, "maxIncrease": "0.1s"},
        {"metric": "latency", "quantile": 0.99, "max": "1.5s", "name": "slow-tail"},
    )
    a, b = load_policy(doc).analysis.checks
    assert (a.max, a.max_increase, b.max) == (250.0, 100.0, 1500.0)


# --------------------------------------------------------------------------- one mistake each


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return apply


def _checks(*checks: dict[str, Any]) -> Mutation:
    return _set("spec.analysis.checks", list(checks))


CASES: list[tuple[str, Mutation, str, str]] = [
    (
        "unknown field",
        _set("spec.canary.stepz", [5, 100]),
        "spec.canary.stepz",
        "unknown field; did you mean steps?",
    ),
    ("unknown top field", _set("spek", {}), "spek", "unknown field; did you mean spec?"),
    (
        "wrong type",
        _set("spec.analysis.minRequests", "many"),
        "spec.analysis.minRequests",
        "must be a whole number, not the string 'many'",
    ),
    (
        "unquoted version",
        _set("spec.stable.version", 1.1),
        "spec.stable.version",
        'must be a string, not the number 1.1 (quote it in YAML: "...")',
    ),
    (
        "missing required field",
        _set("spec.virtualService", {}),
        "spec.virtualService.name",
        "this required field is missing",
    ),
    (
        "steps not rising",
        _set("spec.canary.steps", [5, 25, 20, 100]),
        "spec.canary.steps[2]",
        "20 is not above the previous step 25",
    ),
    (
        "repeated step",
        _set("spec.canary.steps", [5, 50, 50, 100]),
        "spec.canary.steps[2]",
        "50 is repeated: each step must be above the one before",
    ),
    (
        "last step not 100",
        _set("spec.canary.steps", [5, 10, 50]),
        "spec.canary.steps[2]",
        "the last step is 50, but it must be 100 (the last step promotes)",
    ),
    (
        "weight above 100",
        _set("spec.canary.steps", [50, 150]),
        "spec.canary.steps[1]",
        "150 is above the maximum 100",
    ),
    ("weight 0", _set("spec.canary.steps", [0, 100]), "spec.canary.steps[0]", "0 is below the minimum 1"),
    ("no steps", _set("spec.canary.steps", []), "spec.canary.steps", "must not be empty"),
    (
        "mirror above 100",
        _set("spec.blueGreen.mirrorPercent", 101),
        "spec.blueGreen.mirrorPercent",
        "101 is above the maximum 100",
    ),
    (
        "quantile 1.5",
        _checks({"metric": "latency", "quantile": 1.5, "maxIncreaseRatio": 0.1}),
        "spec.analysis.checks[0].quantile",
        "must lie strictly between 0 and 1, not 1.5",
    ),
    (
        "quantile 0",
        _checks({"metric": "latency", "quantile": 0, "maxIncreaseRatio": 0.1}),
        "spec.analysis.checks[0].quantile",
        "must lie strictly between 0 and 1, not 0",
    ),
    (
        "confidence 1",
        _set("spec.analysis.confidence", 1),
        "spec.analysis.confidence",
        "must lie strictly between 0 and 1, not 1",
    ),
    (
        "negative tolerance",
        _checks({"metric": "errorRate", "maxIncrease": -0.01}),
        "spec.analysis.checks[0].maxIncrease",
        "-0.01 is below the minimum 0",
    ),
    (
        "negative ratio",
        _checks({"metric": "errorRate", "maxIncreaseRatio": -1}),
        "spec.analysis.checks[0].maxIncreaseRatio",
        "-1 is below the minimum 0",
    ),
    (
        "negative psi",
        _checks({"metric": "predictionDrift", "maxPSI": -0.2}),
        "spec.analysis.checks[0].maxPSI",
        "-0.2 is below the minimum 0",
    ),
    (
        "bad duration",
        _set("spec.canary.minStepDuration", "5 minutes"),
        "spec.canary.minStepDuration",
        "'5 minutes' is not a duration (use e.g. 500ms, 30s, 5m, 1h)",
    ),
    (
        "duration with a trailing newline",
        _set("spec.analysis.interval", "30s\n"),
        "spec.analysis.interval",
        "'30s\\n' is not a duration (use e.g. 500ms, 30s, 5m, 1h)",
    ),
    (
        "bad latency bound",
        _checks({"metric": "latency", "quantile": 0.99, "max": "fast"}),
        "spec.analysis.checks[0].max",
        "'fast' is not a duration (use e.g. 500ms, 30s, 5m, 1h)",
    ),
    (
        "latency bound of the wrong type",
        _checks({"metric": "latency", "quantile": 0.99, "max": True}),
        "spec.analysis.checks[0].max",
        "must be a number or a duration such as 500ms, not the boolean true",
    ),
    (
        "min step above max step",
        _set("spec.canary", {"minStepDuration": "20m", "maxStepDuration": "10m"}),
        "spec.canary.minStepDuration",
        "20m is longer than maxStepDuration 10m",
    ),
    (
        "interval below 1s",
        _set("spec.analysis.interval", "500ms"),
        "spec.analysis.interval",
        "500ms is shorter than the minimum 1s",
    ),
    (
        "no-data timeout below the interval",
        _set("spec.analysis", {"interval": "1m", "noDataTimeout": "30s"}),
        "spec.analysis.noDataTimeout",
        "30s is shorter than the analysis interval 1m",
    ),
    (
        "duplicate check names",
        _checks({"metric": "errorRate", "max": 0.01}, {"metric": "errorRate", "maxIncrease": 0.01}),
        "spec.analysis.checks[1].metric",
        "the check name 'errorRate' is already used by spec.analysis.checks[0]; give one of them a name",
    ),
    (
        "duplicate explicit names",
        _checks(
            {"metric": "errorRate", "max": 0.01, "name": "e"},
            {"metric": "trafficShare", "maxDeviation": 0.1, "name": "e"},
        ),
        "spec.analysis.checks[1].name",
        "the check name 'e' is already used by spec.analysis.checks[0]",
    ),
    (
        "latency without quantile or slowerThan",
        _checks({"metric": "latency", "maxIncreaseRatio": 0.1}),
        "spec.analysis.checks[0]",
        "a latency check needs quantile (e.g. 0.99) or slowerThan (e.g. 250ms)",
    ),
    (
        "latency with both quantile and slowerThan",
        _checks({"metric": "latency", "quantile": 0.99, "slowerThan": "250ms", "maxIncrease": 0.01}),
        "spec.analysis.checks[0].slowerThan",
        "a latency check takes quantile or slowerThan, not both",
    ),
    (
        "check without a bound",
        _checks({"metric": "errorRate"}),
        "spec.analysis.checks[0]",
        "the errorRate check sets no bound; give it at least one of max, maxIncrease or maxIncreaseRatio",
    ),
    (
        "bound that does not fit the metric",
        _checks({"metric": "accuracy", "maxDecrease": 0.01, "maxPSI": 0.1}),
        "spec.analysis.checks[0].maxPSI",
        "accuracy checks do not use maxPSI; they take maxDecrease, min and minLabeled",
    ),
    (
        "share above 1",
        _checks({"metric": "errorRate", "max": 2}),
        "spec.analysis.checks[0].max",
        "2 is above 1; this bound is a share (0..1)",
    ),
    (
        "duration on a share",
        _checks({"metric": "latency", "slowerThan": "250ms", "max": "300ms"}),
        "spec.analysis.checks[0].max",
        "'300ms' is a duration, but this check's max is a share between 0 and 1",
    ),
    (
        "f1 without class",
        _checks({"metric": "f1", "maxDecrease": 0.01}),
        "spec.analysis.checks[0].class",
        "this required field is missing: f1 checks judge one class",
    ),
    (
        "featureDrift without feature",
        _checks({"metric": "featureDrift", "maxPSI": 0.1}),
        "spec.analysis.checks[0].feature",
        "this required field is missing: featureDrift checks judge one input feature",
    ),
    (
        "trafficShare without bound",
        _checks({"metric": "trafficShare"}),
        "spec.analysis.checks[0]",
        "the trafficShare check sets no bound; give it maxDeviation",
    ),
    (
        "custom without name",
        _checks({"metric": "custom", "query": 'sum(x{v="{{ version }}"})', "min": 1}),
        "spec.analysis.checks[0].name",
        "this required field is missing: a custom check needs a name",
    ),
    (
        "custom without query",
        _checks({"metric": "custom", "name": "kpi", "min": 1}),
        "spec.analysis.checks[0].query",
        "this required field is missing: a custom check needs a query",
    ),
    (
        "hostile custom check name",
        _checks({"metric": "custom", "name": HOSTILE, "query": 'x{v="{{ version }}"}', "min": 1}),
        "spec.analysis.checks[0].name",
        f"{HOSTILE!r} is not a valid check name: use letters, digits, _, - and ., starting with a letter or _",
    ),
    (
        "custom check name with a dash",
        _checks({"metric": "custom", "name": "conv-rate", "query": 'x{v="{{ version }}"}', "min": 1}),
        "spec.analysis.checks[0].name",
        "'conv-rate' is not a valid custom check name: use letters, digits and _, not starting with a digit",
    ),
    (
        "custom query with an unknown placeholder",
        _checks(
            {"metric": "custom", "name": "kpi", "query": 'x{v="{{ version }}",t="{{ team }}"}', "min": 1}
        ),
        "spec.analysis.checks[0].query",
        "the placeholder {{ team }} is neither built in (version and window) nor in spec.metrics.variables",
    ),
    (
        "hostile variable value",
        _set("spec.metrics.variables", {"team": HOSTILE}),
        "spec.metrics.variables.team",
        f"{HOSTILE!r} must not contain a double quote, a backslash, a newline or braces, "
        "which could break out of a PromQL label string",
    ),
    (
        "variable value with a newline",
        _set("spec.metrics.variables", {"team": "a\n"}),
        "spec.metrics.variables.team",
        "'a\\n' must not contain a double quote, a backslash, a newline or braces, "
        "which could break out of a PromQL label string",
    ),
    (
        "variable name",
        _set("spec.metrics.variables", {"my-team": "a"}),
        'spec.metrics.variables["my-team"]',
        "'my-team' is not a valid variable name: use letters, digits and _, not starting with a digit",
    ),
    (
        "hostile class",
        _checks({"metric": "f1", "class": 'x"}', "maxDecrease": 0.1}),
        "spec.analysis.checks[0].class",
        "'x\"}' must not contain a double quote, a backslash, a newline or braces, "
        "which could break out of a PromQL label string",
    ),
    (
        "label name",
        _set("spec.metrics.versionLabel", "destination-version"),
        "spec.metrics.versionLabel",
        "'destination-version' is not a valid name: use letters, digits and _, not starting with a digit",
    ),
    (
        "version with a quote",
        _set("spec.candidate.metricsVersion", 'v2"'),
        "spec.candidate.metricsVersion",
        "'v2\"' must not contain a double quote, a backslash or a newline",
    ),
    (
        "version with a trailing newline",
        _set("spec.candidate.version", "v2\n"),
        "spec.candidate.version",
        "'v2\\n' must not contain a double quote, a backslash or a newline",
    ),
    (
        "same destination twice",
        _set("spec.candidate.destination", {"host": "fraud-scorer", "subset": "v1"}),
        "spec.candidate.destination",
        "the candidate routes to the same destination as stable; use another host or subset",
    ),
    (
        "same metrics version twice",
        _set("spec.candidate.metricsVersion", "v1"),
        "spec.candidate",
        "stable and candidate both carry the metrics version 'v1', so their metrics cannot be told apart; "
        "set different version or metricsVersion",
    ),
    (
        "bad enum",
        _set("spec.strategy", "rolling"),
        "spec.strategy",
        "must be one of canary, blueGreen, not the string 'rolling'",
    ),
    (
        "webhook url not http",
        _set("spec.notifications", [{"webhook": {"url": "ftp://hooks.example.com"}}]),
        "spec.notifications[0].webhook.url",
        "'ftp://hooks.example.com' is not an http:// or https:// URL",
    ),
    (
        "webhook with url and urlFrom",
        _set("spec.notifications", [{"webhook": {"url": "https://h", "urlFrom": {"env": "HOOK"}}}]),
        "spec.notifications[0].webhook",
        "set only one of url and urlFrom, not both",
    ),
    (
        "webhook with neither",
        _set("spec.notifications", [{"webhook": {"format": "slack"}}]),
        "spec.notifications[0].webhook",
        "needs one of url or urlFrom",
    ),
    (
        "secret ref without key",
        _set("spec.notifications", [{"webhook": {"urlFrom": {"secretKeyRef": {"name": "hooks"}}}}]),
        "spec.notifications[0].webhook.urlFrom.secretKeyRef.key",
        "this required field is missing",
    ),
    (
        "bad metadata name",
        _set("metadata.name", "Fraud_Scorer"),
        "metadata.name",
        "'Fraud_Scorer' is not a valid Kubernetes name: use lower-case letters, digits, - and ., "
        "starting and ending with a letter or digit",
    ),
    (
        "empty checks",
        _set("spec.analysis.checks", []),
        "spec.analysis.checks",
        "must not be empty",
    ),
    (
        "wrong apiVersion",
        _set("apiVersion", "mesh-canary.io/v1"),
        "apiVersion",
        "must be one of mesh-canary.io/v1alpha1, not the string 'mesh-canary.io/v1'",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_reported_with_its_path_and_a_sentence(
    mutate: Mutation, path: str, message: str
) -> None:
    doc = copy.deepcopy(MINIMAL)
    mutate(doc)
    problems = validate_document(doc)
    assert [(p.path, p.message) for p in problems] == [(path, message)]
    assert str(problems[0]) == f"{path}: {message}"
    with pytest.raises(PolicyError) as raised:
        load_policy(doc)
    assert raised.value.problems == problems
    assert str(raised.value) == f"{path}: {message}"


def test_every_problem_is_reported_not_just_the_first() -> None:
    doc = minimal(
        strategy="rolling",
        canary={"steps": [5, 25, 20, 100], "minStepDuration": "5 minutes"},
        analysis={
            "confidence": 2,
            "checks": [
                {"metric": "latency", "maxIncreaseRatio": 0.1},
                {"metric": "errorRate", "maxIncrease": -0.1},
            ],
        },
    )
    doc["metadata"]["colour"] = "blue"
    paths = [p.path for p in validate_document(doc)]
    # In document order.
    assert paths == [
        "metadata.colour",
        "spec.strategy",
        "spec.canary.steps[2]",
        "spec.canary.minStepDuration",
        "spec.analysis.confidence",
        "spec.analysis.checks[0]",
        "spec.analysis.checks[1].maxIncrease",
    ]
    with pytest.raises(PolicyError) as raised:
        load_policy(doc)
    assert str(raised.value).startswith("the policy has 7 problems:\n  metadata.colour: unknown field")


@pytest.mark.parametrize("doc", [None, [], "policy", 3])
def test_a_document_that_is_not_a_mapping_is_one_problem(doc: object) -> None:
    (problem,) = validate_document(doc)
    assert problem.path == "" and problem.message.startswith("must be a mapping, not ")


# --------------------------------------------------------------------------- YAML text


def _expectations(text: str) -> list[tuple[int, str, str]]:
    out = []
    for m in re.finditer(r"^# expect (\d+): (.*?): (.*)$", text, re.MULTILINE):
        out.append((int(m.group(1)), m.group(2), m.group(3)))
    return out


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_policy_files_report_exactly_their_expected_problems(path: Path) -> None:
    text = path.read_text()
    expected = _expectations(text)
    assert expected, f"{path.name} names no expected problem"
    problems = validate_text(text, path.name)
    assert [(p.line, p.path, p.message) for p in problems] == expected
    assert all(p.source == path.name for p in problems)
    with pytest.raises(PolicyError):
        load_policy_text(text, path.name)


def test_a_yaml_syntax_error_names_its_line_and_column() -> None:
    text = "apiVersion: mesh-canary.io/v1alpha1\nkind: ModelRollout\nmetadata:\n  name: [a, b\nspec: {}\n"
    (problem,) = validate_text(text, "p.yaml")
    assert (problem.line, problem.column) == (5, 5)
    assert problem.message.startswith("the YAML does not parse: ")
    assert str(problem).startswith("p.yaml:5:5: the YAML does not parse")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n", "---\n"])
def test_text_without_a_mapping_is_rejected(text: str) -> None:
    (problem,) = validate_text(text)
    assert problem.message.startswith("the file holds no YAML mapping")


def test_a_problem_in_yaml_text_carries_the_line_of_its_field() -> None:
    text = (ROOT / "policies" / "minimal.yaml").read_text() + "  canary:\n    steps: [5, 10]\n"
    (problem,) = validate_text(text, "p.yaml")
    assert (problem.line, problem.path) == (12, "spec.canary.steps[1]")
    assert (
        str(problem)
        == "p.yaml:12:16: spec.canary.steps[1]: the last step is 10, but it must be 100 (the last step promotes)"
    )


def test_a_key_written_twice_is_reported() -> None:
    text = (ROOT / "policies" / "minimal.yaml").read_text() + "  strategy: canary\n  strategy: blueGreen\n"
    (problem,) = validate_text(text, "p.yaml")
    assert (problem.line, problem.path) == (12, "spec.strategy")
    assert "appears twice" in problem.message


def test_yaml_anchors_and_merge_keys_work() -> None:
    text = """
apiVersion: mesh-canary.io/v1alpha1
kind: ModelRollout
metadata: {name: anchors}
spec:
  virtualService: {name: anchors}
  stable: {destination: &dest {host: svc, subset: v1}}
  candidate: {destination: {<<: *dest, subset: v2}}
"""
    p = load_policy_text(text)
    assert (p.candidate.destination.host, p.candidate.destination.subset) == ("svc", "v2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("deep: " + "[" * 2000 + "]" * 2000, "the YAML is nested more than 32 levels deep"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)
            ),
            "the YAML holds more than 100000 values (aliases expanded); a policy is far smaller",
        ),
    ],
    ids=["deep", "alias-bomb"],
)
def test_hostile_yaml_is_one_problem_not_a_crash_or_a_hang(text: str, message: str) -> None:
    (problem,) = validate_text(text)
    assert problem.message == message


def test_a_deep_document_from_python_does_not_crash() -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(5000):
        deep = {"x": deep}
    paths = [p.path for p in validate_document(minimal(extra=deep))]
    assert paths == ["spec.extra"]


def test_a_resource_read_back_from_the_apiserver_loads() -> None:
    resource = copy.deepcopy(MINIMAL)
    resource["metadata"].update(uid="1234", resourceVersion="7", generation=2, labels={"team": "risk"})
    resource["status"] = {"phase": "Progressing"}
    doc = resource_document(resource)
    assert doc == {**MINIMAL, "metadata": {"name": "fraud-scorer", "labels": {"team": "risk"}}}
    assert load_policy(doc).name == "fraud-scorer"
    assert validate_document(resource) != []  # the raw resource is not a policy


def test_json_text_is_yaml_too() -> None:
    p = load_policy_text(json.dumps(MINIMAL))
    assert p.name == "fraud-scorer"


# --------------------------------------------------------------------------- the schema


def _walk_properties(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}".lstrip("."), sub
        yield from _walk_properties(sub, f"{path}.{name}")
        if isinstance(sub.get("items"), dict):
            yield from _walk_properties(sub["items"], f"{path}.{name}[]")
        if isinstance(sub.get("additionalProperties"), dict):
            yield from _walk_properties(sub["additionalProperties"], f"{path}.{name}.*")


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def test_the_schema_is_valid_and_uses_only_what_a_crd_can_hold() -> None:
    schema = policy_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for node in _nodes(schema["properties"]["spec"]):
        assert not {"$ref", "$defs", "const", "if", "then", "else", "uniqueItems", "propertyNames"} & set(
            node
        )
    for path, sub in _walk_properties(schema):
        assert sub.get("description"), f"{path} has no description"


def test_every_pattern_in_the_schema_has_a_sentence() -> None:
    patterns = {n["pattern"] for n in _nodes(policy_schema()) if isinstance(n.get("pattern"), str)}
    assert patterns <= set(policy_schema_module._PATTERN_WORDS)


def test_spec_schema_is_the_spec_part_and_a_copy() -> None:
    spec = spec_schema()
    assert spec == policy_schema()["properties"]["spec"]
    spec["properties"].clear()
    assert spec_schema()["properties"]


def test_the_crd_form_is_structural() -> None:
    crd = crd_spec_schema()
    for node in _nodes(crd):
        # The apiserver forbids these in a structural schema.
        assert node.get("additionalProperties") is not False
        assert not ("properties" in node and "additionalProperties" in node)
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert key not in node or node[key] is True
        for junctor in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(junctor, []):
                assert set(branch) <= {"required"}, branch
    for path, sub in _walk_properties(crd):
        assert "type" in sub or sub.get("x-kubernetes-preserve-unknown-fields") is True, path
    quantile = crd["properties"]["analysis"]["properties"]["checks"]["items"]["properties"]["quantile"]
    assert (quantile["minimum"], quantile["exclusiveMinimum"], quantile["maximum"]) == (0, True, 1)


def test_the_docs_name_every_field() -> None:
    docs = (ROOT / "docs" / "policy.md").read_text()
    missing = sorted(
        {path.rsplit(".", 1)[-1] for path, _ in _walk_properties(policy_schema())}
        - set(re.findall(r"`(\w+)`", docs))
    )
    assert not missing, f"docs/policy.md does not document {missing}"


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=8))
def test_steps_are_valid_exactly_when_strictly_rising_to_100(steps: list[int]) -> None:
    problems = validate_document(minimal(canary={"steps": steps}))
    rising = all(a < b for a, b in itertools.pairwise(steps))
    # At least one judged step below 100: [100] alone would send everything at once.
    assert (problems == []) == (rising and steps[-1] == 100 and len(steps) >= 2)
    assert all(p.path.startswith("spec.canary.steps[") for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12))
def test_an_accepted_variable_value_cannot_break_out_of_a_label_string(value: str) -> None:
    problems = validate_document(minimal(metrics={"variables": {"v": value}}))
    if not problems:
        assert not set(value) & set('"\\\n\r{}')
    else:
        assert [p.path for p in problems] == ["spec.metrics.variables.v"]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
SPEC_KEYS = st.sampled_from(
    [
        "virtualService",
        "stable",
        "candidate",
        "fallback",
        "strategy",
        "canary",
        "blueGreen",
        "analysis",
        "metrics",
        "gates",
        "notifications",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPEC_KEYS, JSON, st.lists(JSON, max_size=3))
def test_any_garbage_gives_problems_not_a_crash(key: str, value: Any, checks: list[Any]) -> None:
    doc = minimal(**{key: value})
    doc["spec"].setdefault("analysis", {})
    if isinstance(doc["spec"]["analysis"], dict):
        doc["spec"]["analysis"]["checks"] = checks
    problems = validate_document(doc)
    assert all(isinstance(p, Problem) and p.message for p in problems)
    if not problems:
        load_policy(doc)  # whatever passes validation must load


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "must be a finite number, not NaN"),
        (float("inf"), "must be a finite number, not infinity"),
        (-float("inf"), "must be a finite number, not -infinity"),
        (1e300, "1e+300 is too large (at most 1e+15)"),
        (10**5000, "a 5001-digit number is too large (at most 1e+15)"),  # str() of it would raise
    ],
    ids=["nan", "inf", "-inf", "1e300", "5001-digits"],
)
def test_numbers_that_are_not_finite_or_absurdly_large_get_one_sentence(value: Any, words: str) -> None:
    for field in ("max", "maxIncrease"):
        doc = minimal(analysis={"checks": [{"metric": "errorRate", field: value}]})
        assert [(p.path, p.message) for p in validate_document(doc)] == [
            (f"spec.analysis.checks[0].{field}", words)
        ]
    doc = minimal(analysis={"confidence": value, "minRequests": value}, canary={"steps": [value, 100]})
    assert {p.path for p in validate_document(doc)} == {
        "spec.analysis.confidence",
        "spec.analysis.minRequests",
        "spec.canary.steps[0]",
    }


def test_durations_beyond_30_days_are_refused() -> None:
    doc = minimal(
        analysis={"interval": "110000d", "noDataTimeout": "110000d"}, canary={"maxStepDuration": "31d"}
    )
    got = {(p.path, p.message) for p in validate_document(doc)}
    assert ("spec.analysis.interval", "110000d is longer than the limit 30d") in got
    assert ("spec.canary.maxStepDuration", "31d is longer than the limit 30d") in got
    assert validate_document(minimal(canary={"maxStepDuration": "30d"})) == []


def test_values_of_the_wrong_shape_never_crash_the_rules() -> None:
    for doc in (
        minimal(analysis={"checks": [{"metric": [], "max": 1}]}),
        minimal(analysis={"checks": [{"metric": {}, "max": 1}]}),
        minimal(virtualService={"name": "fraud-scorer", "routes": [["a"]]}),
    ):
        problems = validate_document(doc)
        assert len(problems) == 1 and problems[0].message.startswith("must be a string"), problems
