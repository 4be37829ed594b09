"""The check-kind registry (mesh_canary.checks): every layer reads it, none names a kind.

The schema's metric enum and check fields agree with the registry; a kind registered in one
line is judged, planned, named and validated without touching any other layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from mesh_canary import checks
from mesh_canary.checks import (
    REGISTRY,
    SIGNALS,
    CheckKind,
    UnknownCheckKind,
    error_rate,
    kind_of,
    tolerance_words,
)
from mesh_canary.checks.base import Judging
from mesh_canary.checks.bounds import Subject
from mesh_canary.checks.evidence import Evidence
from mesh_canary.checks.rates import Prepared, RateKind, evaluate_rate
from mesh_canary.core import engine
from mesh_canary.core import policy as policy_module
from mesh_canary.core.durations import parse_duration
from mesh_canary.core.judge import AnytimeJudge, rate_counts
from mesh_canary.core.model import AnalysisSpec, BlueGreenSpec, CanarySpec, Check, MetricsSpec
from mesh_canary.core.observations import Observation, VersionCounts
from mesh_canary.core.policy import load_policy, policy_schema, validate_document
from mesh_canary.core.policy.defaults import SPEC, default_check_name
from mesh_canary.core.verdicts import CheckResult, JudgeContext, Verdict
from mesh_canary.metrics import promql
from mesh_canary.simulation.traffic import PRODUCED_SIGNALS, SyntheticMesh, load_scenario

MINIMAL: dict[str, Any] = {
    "apiVersion": "mesh-canary.io/v1alpha1",
    "kind": "ModelRollout",
    "metadata": {"name": "fraud-scorer"},
    "spec": {
        "virtualService": {"name": "fraud-scorer"},
        "stable": {"destination": {"host": "fraud-scorer", "subset": "v1"}},
        "candidate": {"destination": {"host": "fraud-scorer", "subset": "v2"}},
    },
}


def _check_schema() -> dict[str, Any]:
    spec = policy_schema()["properties"]["spec"]
    items: dict[str, Any] = spec["properties"]["analysis"]["properties"]["checks"]["items"]
    return items


def with_checks(*docs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {**MINIMAL, "spec": {**MINIMAL["spec"], "analysis": {"checks": list(docs)}}}
    return out


# --------------------------------------------------------------------------- the registry and the schema


def test_the_schema_metric_enum_is_the_registry() -> None:
    """Generated from the registry when the schema loads, and written nowhere else."""
    assert _check_schema()["properties"]["metric"]["enum"] == list(REGISTRY)
    text = (Path(policy_module.__file__).parent.parent / "policy.schema.json").read_text()
    assert '"errorRate"' not in text and '"featureDrift"' not in text


def test_every_field_a_kind_takes_is_in_the_schema_and_every_check_field_is_taken() -> None:
    fields = set(_check_schema()["properties"]) - {"metric", "name"}
    taken = {f for kind in REGISTRY.values() for f in kind.fields}
    assert taken == fields
    for kind in REGISTRY.values():
        assert kind.bounds, kind.name
        assert set(kind.bounds) <= set(checks.BOUNDS), kind.name
        assert set(kind.required) <= set(kind.qualifiers), kind.name
        assert kind.signals <= set(SIGNALS), kind.name


def test_the_label_based_kinds_are_those_that_read_labels() -> None:
    labelled = {k for k, kind in REGISTRY.items() if kind.label_based}
    assert labelled == {"accuracy", "precision", "recall", "f1"}
    assert labelled == {k for k, kind in REGISTRY.items() if "confusion" in kind.signals}


def test_kind_of_names_an_unknown_metric() -> None:
    assert kind_of("latency") is REGISTRY["latency"]
    with pytest.raises(UnknownCheckKind, match="unknown metric 'calibration'"):
        kind_of("calibration")


def test_default_names_come_from_the_kinds() -> None:
    assert default_check_name({"metric": "latency", "quantile": 0.95}) == "latency-p95"
    assert default_check_name({"metric": "latency", "slowerThan": "1s"}) == "latency-slower-than-1000ms"
    assert default_check_name({"metric": "f1", "class": "fraud"}) == "f1-fraud"
    assert default_check_name({"metric": "accuracy", "class": "fraud"}) == "accuracy"
    assert default_check_name({"metric": "featureDrift", "feature": "amount"}) == "featureDrift-amount"
    assert default_check_name({"metric": "nonsense"}) == "nonsense"


def test_tolerance_words_list_every_bound() -> None:
    check = Check(metric="errorRate", name="e", max=0.05, max_increase_ratio=0.25)
    assert tolerance_words(check) == "at most 0.05; at most stable x (1 + 0.25)"


def test_rate_counts_come_from_the_kind_and_refuse_other_kinds() -> None:
    counts = VersionCounts(requests=200, errors=3, confusion={("a", "a"): 8, ("a", "b"): 2, ("b", "a"): 1})
    assert rate_counts(Check(metric="errorRate", name="e"), counts) == (3, 200)
    assert rate_counts(Check(metric="precision", name="p", class_="a"), counts) == (8, 10)
    assert rate_counts(Check(metric="recall", name="r", class_="a"), counts) == (8, 9)
    with pytest.raises(ValueError, match="not a rate metric"):
        rate_counts(Check(metric="predictionDrift", name="d"), counts)


# --------------------------------------------------------------------------- defaults in one place


def test_the_document_defaults_are_the_model_defaults() -> None:
    policy = load_policy(MINIMAL)
    assert policy.canary == CanarySpec()
    assert policy.blue_green == BlueGreenSpec()
    assert dataclasses.replace(policy.analysis, checks=()) == AnalysisSpec()
    assert policy.metrics == MetricsSpec()
    assert parse_duration(SPEC["canary"]["minStepDuration"]) == CanarySpec().min_step_duration_s
    assert policy.document["spec"]["canary"]["maxStepDuration"] == "15m"


# --------------------------------------------------------------------------- signals


def test_query_planning_asks_for_the_signals_each_kind_declares() -> None:
    families = {"requests": "traffic", "errors": "traffic", "latency": "latency", "confusion": "confusion"}
    families |= {"predictions": "predictions", "features": "features", "custom": "custom"}
    for kind in REGISTRY.values():
        check: dict[str, Any] = {"metric": kind.name, kind.bounds[0]: 0.1, "name": "c"}
        check |= {"quantile": 0.9} if kind.name == "latency" else {}
        check |= {q: "x" for q in kind.required}
        check |= {"query": 'sum(x{v="{{ version }}"})'} if kind.name == "custom" else {}
        policy = load_policy(with_checks(check))
        planned = {q.family for q in promql.plan_queries(policy, "60s")}
        assert planned == {families[s] for s in kind.signals}, kind.name


def test_the_synthetic_traffic_produces_every_signal_but_custom_values() -> None:
    scenario = load_scenario(
        {
            "duration": "1h",
            "traffic": {"rps": 50},
            "versions": {
                "stable": {
                    "errorRate": 0.01,
                    "latency": {"medianMs": 80, "p99Ms": 250},
                    "labels": {"delayMeanS": 1, "missing": 0.0},
                    "predictions": [0.6, 0.4],
                    "features": {"amount": {"bounds": [10], "shares": [0.5, 0.5]}},
                },
                "candidate": {},
            },
        }
    )
    mesh = SyntheticMesh(scenario, seed=1)
    mesh.advance(600)
    stable = mesh.read(0, 600).stable
    present = {
        "requests": stable.requests > 0,
        "errors": stable.errors >= 0,
        "latency": stable.latency_ms is not None,
        "confusion": bool(stable.confusion),
        "predictions": bool(stable.predictions),
        "features": bool(stable.features),
        "custom": bool(stable.custom),
    }
    assert {s for s, there in present.items() if there} == set(PRODUCED_SIGNALS)
    assert set(SIGNALS) - PRODUCED_SIGNALS == {"custom"}


# --------------------------------------------------------------------------- one module plus one line


def _share_of_class(check: Check, counts: VersionCounts) -> tuple[float, float]:
    """A throw-away kind: the share of predictions of one class."""
    total = sum(counts.predictions.values())
    return counts.predictions.get(check.class_ or "", 0.0), total


def _prepare(check: Check, ev: Evidence, ctx: JudgeContext) -> Prepared:
    return Subject(f"share of {check.class_!r} predictions", "rate", "predictions"), []


_RATE = RateKind(_share_of_class, _prepare, lambda check: "no predictions")


def _evaluate(judge: Judging, check: Check, ev: Evidence, ctx: JudgeContext, alpha: float) -> CheckResult:
    return evaluate_rate(_RATE, judge, check, ev, ctx, alpha)


SHARE = CheckKind(
    name="classShare",
    title="class share",
    bounds=("max", "maxIncreaseRatio"),
    qualifiers=("class",),
    required={"class": "classShare checks judge one class"},
    signals=frozenset({"predictions"}),
    evaluate=_evaluate,
    counts=lambda check, c: [("predictions", v) for v in c.predictions.values()],
    default_name=lambda check: f"classShare-{check.get('class')}",
    is_share=lambda check: True,
    rate=_share_of_class,
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> CheckKind:
    monkeypatch.setitem(REGISTRY, SHARE.name, SHARE)
    return SHARE


def test_a_registered_kind_is_judged_named_planned_and_validated(registered: CheckKind) -> None:
    check = Check(metric="classShare", name="classShare-fraud", class_="fraud", max_increase_ratio=0.5)
    stable = VersionCounts(requests=20_000, predictions={"fraud": 1_000, "ok": 19_000})
    worse = VersionCounts(requests=20_000, predictions={"fraud": 3_000, "ok": 17_000})
    ctx = JudgeContext(0.5, 0.01, 100)
    judge = AnytimeJudge()
    (bad,) = judge.evaluate([check], Observation(0, 60, stable, worse), ctx)
    assert bad.verdict is Verdict.FAIL and bad.reason.startswith("share of 'fraud' predictions 15.00%")
    (good,) = judge.evaluate([check], Observation(0, 60, stable, stable), ctx)
    assert good.verdict is not Verdict.FAIL
    assert default_check_name({"metric": "classShare", "class": "fraud"}) == "classShare-fraud"
    assert promql.checks_families([check]) == {"predictions"}
    # The policy's rules come from the kind (the schema's enum would need the name too).
    problems = validate_document(with_checks({"metric": "classShare", "maxPSI": 0.1}))
    said = {(p.path, p.message) for p in problems}
    assert (
        "spec.analysis.checks[0].class",
        "this required field is missing: classShare checks judge one class",
    ) in said
    assert any(
        "classShare checks do not use maxPSI; they take class, max and maxIncreaseRatio" in m for _, m in said
    )


def test_the_engine_reads_label_based_from_the_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    check = Check(metric="classShare", name="c")
    waiting = CheckResult(
        name="c", metric="classShare", verdict=Verdict.INCONCLUSIVE, reason="", enough_data=False
    )
    monkeypatch.setitem(REGISTRY, "classShare", SHARE)
    assert not engine._ready(waiting, check, final_window=False)
    monkeypatch.setitem(REGISTRY, "classShare", dataclasses.replace(SHARE, label_based=True))
    assert engine._ready(waiting, check, final_window=False)


def test_an_unknown_kind_is_inconclusive_never_a_pass() -> None:
    check = Check(metric="nonsense", name="n")
    counts = VersionCounts(requests=1000)
    (r,) = AnytimeJudge().evaluate([check], Observation(0, 60, counts, counts), JudgeContext(0.5, 0.01, 100))
    assert r.verdict is Verdict.INCONCLUSIVE and r.reason == "unknown metric 'nonsense'"


def test_error_rate_is_one_module() -> None:
    assert REGISTRY["errorRate"] is error_rate.KIND
