"""PromQL building for the Prometheus MetricsSource: exact queries, escaping, hostile values."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_canary.core.model import (
    Check,
    MetricsSpec,
    Policy,
)
from mesh_canary.core.observations import INF
from mesh_canary.core.policy import load_policy_text
from mesh_canary.metrics import promql
from mesh_canary.metrics.promql import PromQLError, Query, Reading, interpret, plan_queries, render_custom
from tests.conftest import make_policy

ERROR_RATE = Check(metric="errorRate", name="errorRate", max_increase=0.005)
LATENCY = Check(metric="latency", name="latency", quantile=0.99, max_increase_ratio=0.1)
ACCURACY = Check(metric="accuracy", name="accuracy", max_decrease=0.01)
F1 = Check(metric="f1", name="f1-fraud", class_="fraud", max_decrease=0.02)
DRIFT = Check(metric="predictionDrift", name="predictionDrift", max_psi=0.2)
SHARE = Check(metric="trafficShare", name="trafficShare", max_deviation=0.02)


def feature(name: str) -> Check:
    return Check(metric="featureDrift", name=f"featureDrift-{name}", feature=name, max_psi=0.2)


def custom(query: str, name: str = "conversion") -> Check:
    return Check(metric="custom", name=name, query=query, min=0.02)


def policy(
    checks: Sequence[Check] = (ERROR_RATE, LATENCY),
    stable: str = "v1",
    candidate: str = "v2",
    host: str = "fraud-scorer",
    candidate_host: str | None = None,
    profile: str = "istio",
    version_label: str = "destination_version",
    model_version_label: str = "version",
    variables: Mapping[str, str] | None = None,
) -> Policy:
    """The shared Policy with these metrics versions, hosts and query settings."""
    return make_policy(
        checks,
        metrics_versions=(stable, candidate),
        hosts=(host, candidate_host),
        metrics=MetricsSpec(
            profile=profile,  # type: ignore[arg-type]
            version_label=version_label,
            model_version_label=model_version_label,
            variables=dict(variables or {}),
        ),
    )


ISTIO_SCOPE = (
    'reporter="destination",destination_service_name="fraud-scorer",destination_service_namespace="models"'
)


# --- the exact queries -------------------------------------------------------------------------


def test_default_checks_on_istio_send_two_queries_that_answer_for_both_versions() -> None:
    queries = plan_queries(policy(), "300s")
    assert [q.promql for q in queries] == [
        "sum by (destination_version, response_code) (increase(istio_requests_total{"
        + ISTIO_SCOPE
        + ',destination_version=~"v1|v2"}[300s]))',
        "sum by (destination_version, le) (increase(istio_request_duration_milliseconds_bucket{"
        + ISTIO_SCOPE
        + ',destination_version=~"v1|v2"}[300s]))',
    ]
    assert [q.family for q in queries] == ["traffic", "latency"]


def test_envoy_profile_reads_per_cluster_stats_named_after_the_versions() -> None:
    queries = plan_queries(policy(profile="envoy"), "61s")
    assert [q.promql for q in queries] == [
        "sum by (envoy_cluster_name, envoy_response_code_class) (increase(envoy_cluster_upstream_rq_xx{"
        'envoy_cluster_name=~"v1|v2"}[61s]))',
        "sum by (envoy_cluster_name, le) (increase(envoy_cluster_upstream_rq_time_bucket{"
        'envoy_cluster_name=~"v1|v2"}[61s]))',
    ]
    assert {q.label for q in queries} == {"envoy_cluster_name"}
    # A label set explicitly is kept.
    assert plan_queries(policy(profile="envoy", version_label="cluster"), "1s")[0].label == "cluster"


def test_only_the_families_the_checks_need_are_queried() -> None:
    assert [q.family for q in plan_queries(policy([ACCURACY, F1]), "1s")] == ["confusion"]
    assert [q.family for q in plan_queries(policy([SHARE]), "1s")] == ["traffic"]
    assert [q.family for q in plan_queries(policy([LATENCY]), "1s")] == ["traffic", "latency"]
    assert [q.family for q in plan_queries(policy([ERROR_RATE], profile="envoy"), "1s")] == ["traffic"]
    assert plan_queries(policy([]), "1s") == []


def test_model_convention_queries() -> None:
    checks = [ACCURACY, DRIFT, feature("transaction_amount"), feature("age"), feature("age")]
    queries = {
        q.family: q.promql for q in plan_queries(policy(checks, model_version_label="model_version"), "300s")
    }
    assert queries == {
        "confusion": "sum by (model_version, predicted, actual) "
        '(increase(model_feedback_total{model_version=~"v1|v2"}[300s]))',
        "predictions": 'sum by (model_version, class) (increase(model_predictions_total{model_version=~"v1|v2"}[300s]))',
        "features": "sum by (model_version, feature, le) (increase(model_feature_value_bucket{"
        'model_version=~"v1|v2",feature=~"age|transaction_amount"}[300s]))',
    }


@pytest.mark.parametrize(
    ("host", "scope"),
    [
        ("fraud-scorer", 'destination_service_name="fraud-scorer",destination_service_namespace="models"'),
        ("fraud-scorer.prod", 'destination_service_name="fraud-scorer",destination_service_namespace="prod"'),
        (
            "fraud-scorer.prod.svc",
            'destination_service_name="fraud-scorer",destination_service_namespace="prod"',
        ),
        (
            "fraud-scorer.prod.svc.corp.example",
            'destination_service_name="fraud-scorer",destination_service_namespace="prod"',
        ),
        ("scorer.example.com", 'destination_service="scorer.example.com"'),
    ],
)
def test_istio_scope_follows_the_stable_destination_host(host: str, scope: str) -> None:
    query = plan_queries(policy([ERROR_RATE], host=host), "5s")[0].promql
    assert f'{{reporter="destination",{scope},destination_version=~"v1|v2"}}' in query


def test_host_based_versions_on_two_services_are_joined_with_or() -> None:
    query = plan_queries(policy([ERROR_RATE], host="scorer-v1", candidate_host="scorer-v2"), "5s")[0].promql
    assert query == (
        "sum by (destination_version, response_code) (("
        'increase(istio_requests_total{reporter="destination",destination_service_name="scorer-v1",'
        'destination_service_namespace="models",destination_version=~"v1|v2"}[5s]) or '
        'increase(istio_requests_total{reporter="destination",destination_service_name="scorer-v2",'
        'destination_service_namespace="models",destination_version=~"v1|v2"}[5s])))'
    )


@pytest.mark.parametrize(
    ("since", "now", "window"),
    [
        (0.0, 300.0, "300s"),
        (0.0, 299.6, "300s"),
        (10.0, 10.4, "1s"),
        (5.0, 5.0, "1s"),
        (9.0, 3.0, "1s"),
        (0, 3600.2, "3600s"),
    ],
)
def test_window_is_whole_seconds_at_least_one(since: float, now: float, window: str) -> None:
    assert promql.format_window(since, now) == window


# --- escaping ----------------------------------------------------------------------------------


def lex(query: str) -> tuple[str, list[str]]:
    """(skeleton with string literals replaced by S and comments by C, decoded literals): a tiny PromQL lexer."""
    skeleton: list[str] = []
    literals: list[str] = []
    i = 0
    escapes = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "'": "'"}
    while i < len(query):
        ch = query[i]
        if ch in "\"'":
            i += 1
            value = []
            while query[i] != ch:
                if query[i] == "\\":
                    value.append(escapes[query[i + 1]])
                    i += 2
                else:
                    value.append(query[i])
                    i += 1
            literals.append("".join(value))
            skeleton.append("S")
        elif ch == "#":
            end = query.find("\n", i)
            i = len(query) if end < 0 else end - 1
            skeleton.append("C")
        else:
            skeleton.append(ch)
        i += 1
    return "".join(skeleton), literals


def matchers(query: str) -> list[tuple[str, str, str]]:
    """The (label, op, decoded value) matchers of every selector in ``query``."""
    skeleton, literals = lex(query)
    found = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)(=~|!~|!=|=)S", skeleton)
    assert len(found) == len(literals)
    return [(name, op, value) for (name, op), value in zip(found, literals, strict=True)]


HOSTILE = [
    'v1"} or vector(1) #',
    ".*",
    "v2\n} or up{",
    "a|b",
    "{{ version }}",
    "x\\",
    'x\\"',
    "sum by (x) (y)",
    "é ü \t",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_version_values_cannot_change_the_query_structure(hostile: str) -> None:
    benign = plan_queries(policy([ERROR_RATE, LATENCY, ACCURACY], stable="safe"), "300s")
    evil = plan_queries(policy([ERROR_RATE, LATENCY, ACCURACY], stable=hostile), "300s")
    for b, e in zip(benign, evil, strict=True):
        assert lex(e.promql)[0] == lex(b.promql)[0], "the structure outside string literals changed"
        _label, op, regex = next(m for m in matchers(e.promql) if m[1] == "=~")
        assert op == "=~"
        # The decoded regex matches exactly the two versions, literally.
        assert re.fullmatch(regex, hostile) and re.fullmatch(regex, "v2")
        assert not re.fullmatch(regex, "v1") and not re.fullmatch(regex, "anything")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_any_version_names_render_as_exactly_the_intended_matchers(stable: str, candidate: str) -> None:
    if stable == candidate:
        return
    query = plan_queries(policy([ERROR_RATE], stable=stable, candidate=candidate), "60s")[0].promql
    assert matchers(query) == [
        ("reporter", "=", "destination"),
        ("destination_service_name", "=", "fraud-scorer"),
        ("destination_service_namespace", "=", "models"),
        ("destination_version", "=~", promql.regex_escape(stable) + "|" + promql.regex_escape(candidate)),
    ]
    regex = matchers(query)[-1][2]
    assert re.fullmatch(regex, stable, re.DOTALL) and re.fullmatch(regex, candidate, re.DOTALL)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_service_host_and_namespace_are_string_escaped(host: str) -> None:
    if not host or "." in host:
        return
    query = plan_queries(policy([ERROR_RATE], host=host), "60s")[0].promql
    assert ("destination_service_name", "=", host) in matchers(query)


def test_quote_and_regex_escape() -> None:
    assert promql.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert (
        promql.regex_escape("a.b*c+d?(e)|[f]{g}^h$\\")
        == "a\\.b\\*c\\+d\\?\\(e\\)\\|\\[f\\]\\{g\\}\\^h\\$\\\\"
    )
    # Go's QuoteMeta leaves everything else alone (RE2 rejects escaped letters and spaces).
    assert promql.regex_escape("v1-2 #x") == "v1-2 #x"
    assert promql.regex_quote(["v1", ".*"]) == '"v1|\\\\.\\\\*"'


@pytest.mark.parametrize("bad", ["bad-label", "1abc", "", 'a"b', "a b", "le}", "a\n"])
def test_label_names_are_validated(bad: str) -> None:
    with pytest.raises(PromQLError, match="not a valid label name"):
        plan_queries(policy(version_label=bad), "1s")
    with pytest.raises(PromQLError, match="not a valid label name"):
        plan_queries(policy([ACCURACY], model_version_label=bad), "1s")


def test_equal_metrics_versions_are_rejected() -> None:
    with pytest.raises(PromQLError, match="cannot be told apart"):
        plan_queries(policy(stable="v1", candidate="v1"), "1s")


# --- custom queries ----------------------------------------------------------------------------

CONVERSION = 'sum(rate(checkout_total{version="{{ version }}"}[{{ window }}]))'


def test_custom_query_is_rendered_once_per_version() -> None:
    queries = plan_queries(policy([custom(CONVERSION)]), "120s")
    assert [(q.version, q.promql) for q in queries] == [
        ("v1", 'sum(rate(checkout_total{version="v1"}[120s]))'),
        ("v2", 'sum(rate(checkout_total{version="v2"}[120s]))'),
    ]
    assert all(q.family == "custom" and q.check == "conversion" for q in queries)


def test_custom_query_without_version_is_sent_once() -> None:
    queries = plan_queries(policy([custom("sum by (version) (rate(checkout_total[{{window}}]))")]), "9s")
    assert [(q.version, q.promql) for q in queries] == [(None, "sum by (version) (rate(checkout_total[9s]))")]


def test_custom_variables_and_contexts() -> None:
    template = (
        'sum(rate(checkout_total{version="{{ version }}",shop=~"{{ shop }}",env=\'{{ env }}\'}[{{ window }}])) '
        "> {{ threshold }} # {{ note }}\n"
    )
    variables = {"shop": "eu.*", "env": "it's", "threshold": "0.5", "note": "x\nvector(1)"}
    text = render_custom(template, 'v1"}', "60s", variables)
    assert text == (
        'sum(rate(checkout_total{version="v1\\"}",shop=~"eu\\\\.\\\\*",env=\'it\\\'s\'}[60s])) '
        "> 0.5 # x\\nvector(1)\n"
    )


@pytest.mark.parametrize(
    ("template", "variables", "message"),
    [
        ('x{a="{{ versoin }}"}', {}, "unknown placeholder"),
        ('x{a="{{ version.x }}"}', {}, "unknown placeholder"),
        ('x{a="{{ shop }}"}', {}, "unknown placeholder"),
        ("x > {{ shop }}", {"shop": "1 or vector(1)"}, "outside quotes"),
        ("x{a={{ version }}}", {}, "outside quotes"),
        ("x{a=`{{ version }}`}", {}, "raw"),
        ('x{a="{{ version }}}', {}, "unterminated"),
        ('x{a="{{ window }}"}', {"window": "1"}, "built-in placeholder"),
        ('x{a="{{ bad-name }}"}', {"bad-name": "1"}, "not a valid label name"),
    ],
)
def test_custom_template_errors(template: str, variables: dict[str, str], message: str) -> None:
    with pytest.raises(PromQLError, match=message):
        render_custom(template, "v1", "60s", variables)


def test_custom_version_placeholder_is_rejected_when_rendered_without_a_version() -> None:
    with pytest.raises(PromQLError, match="unknown placeholder"):
        render_custom('x{v="{{ version }}"}', None, "60s")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_in_custom_templates_stay_inside_their_strings(hostile: str) -> None:
    template = 'sum(x{version="{{ version }}",shop=~"{{ shop }}"}) # {{ shop }}\n/ sum(y{a="b"})'
    benign = render_custom(template, "safe", "60s", {"shop": "safe"})
    evil = render_custom(template, hostile, "60s", {"shop": hostile})
    assert lex(evil)[0] == lex(benign)[0] == "sum(x{version=S,shop=~S}) C\n/ sum(y{a=S})"
    assert evil.count("\n") == 1  # a newline in the comment's value cannot end the comment
    assert matchers(evil)[:2] == [("version", "=", hostile), ("shop", "=~", promql.regex_escape(hostile))]


# --- reading answers ---------------------------------------------------------------------------


def vector(*items: tuple[Mapping[str, str], str]) -> list[dict[str, object]]:
    return [{"metric": dict(labels), "value": [1700000000.0, value]} for labels, value in items]


def reading() -> Reading:
    return Reading("v1", "v2", "300s")


def q(family: str, label: str = "destination_version", metric: str = "m", **kw: str) -> Query:
    return Query(family, "", label, metric, **kw)  # type: ignore[arg-type]


def test_interpret_envoy_traffic_sums_classes_and_counts_class_5_as_errors() -> None:
    r = reading()
    label = "envoy_cluster_name"
    interpret(
        r,
        q("traffic", label),
        "vector",
        vector(
            ({label: "v1", "envoy_response_code_class": "2"}, "90"),
            ({label: "v1", "envoy_response_code_class": "4"}, "3"),
            ({label: "v2", "envoy_response_code_class": "5"}, "7"),
        ),
    )
    stable, candidate = r.version_counts()
    assert (stable.requests, stable.errors, candidate.requests, candidate.errors) == (93, 0, 7, 7)


def test_interpret_traffic_sums_codes_and_counts_5xx_as_errors() -> None:
    r = reading()
    interpret(
        r,
        q("traffic"),
        "vector",
        vector(
            ({"destination_version": "v1", "response_code": "200"}, "90"),
            ({"destination_version": "v1", "response_code": "503"}, "4"),
            ({"destination_version": "v1", "response_code": "404"}, "6"),
            ({"destination_version": "v2", "response_code": "500"}, "1.5"),
            ({"destination_version": "v3", "response_code": "500"}, "1000"),
        ),
    )
    stable, candidate = r.version_counts()
    assert (stable.requests, stable.errors) == (100.0, 4.0)
    assert (candidate.requests, candidate.errors) == (1.5, 1.5)
    assert r.problems == []


def test_interpret_histogram_sorts_bounds_and_keeps_it_cumulative() -> None:
    r = reading()
    v = "destination_version"
    interpret(
        r,
        q("latency"),
        "vector",
        vector(
            ({v: "v1", "le": "+Inf"}, "10"),
            ({v: "v1", "le": "5"}, "4"),
            ({v: "v1", "le": "25"}, "3.9"),  # extrapolation wobble: below the previous bucket
            ({v: "v1", "le": "10"}, "4"),
            ({v: "v2", "le": "+Inf"}, "2"),
            ({v: "v2", "le": "5"}, "1"),
        ),
    )
    stable, candidate = r.version_counts()
    assert stable.latency_ms is not None and candidate.latency_ms is not None
    assert stable.latency_ms.bounds == (5.0, 10.0, 25.0, INF)
    assert stable.latency_ms.counts == (4.0, 4.0, 4.0, 10.0)
    assert candidate.latency_ms.counts == (1.0, 2.0)
    assert r.problems == []


def test_interpret_histogram_without_inf_bucket_is_a_problem() -> None:
    r = reading()
    interpret(
        r,
        q("latency", metric="h"),
        "vector",
        vector(
            ({"destination_version": "v1", "le": "5"}, "1"),
            ({"destination_version": "v2", "le": "+Inf"}, "1"),
        ),
    )
    assert r.problems == ['h has no le="+Inf" bucket for the stable (v1)']


def test_interpret_model_families() -> None:
    r = reading()
    interpret(
        r,
        q("confusion", "version"),
        "vector",
        vector(
            ({"version": "v1", "predicted": "fraud", "actual": "fraud"}, "3"),
            ({"version": "v1", "predicted": "legit", "actual": "fraud"}, "1"),
            ({"version": "v2", "predicted": "legit", "actual": "legit"}, "0"),
        ),
    )
    interpret(
        r,
        q("predictions", "version"),
        "vector",
        vector(({"version": "v1", "class": "fraud"}, "7"), ({"version": "v2", "class": "legit"}, "2")),
    )
    interpret(
        r,
        q("features", "version"),
        "vector",
        vector(
            ({"version": "v1", "feature": "age", "le": "1"}, "2"),
            ({"version": "v1", "feature": "age", "le": "+Inf"}, "3"),
            ({"version": "v2", "feature": "age", "le": "+Inf"}, "0"),
        ),
    )
    stable, candidate = r.version_counts()
    assert stable.confusion == {("fraud", "fraud"): 3.0, ("legit", "fraud"): 1.0}
    assert (stable.labeled, stable.correct) == (4.0, 3.0)
    assert candidate.confusion == {("legit", "legit"): 0.0}
    assert stable.predictions == {"fraud": 7.0} and candidate.predictions == {"legit": 2.0}
    assert stable.features["age"].counts == (2.0, 3.0) and candidate.features["age"].bounds == (INF,)
    assert r.problems == []


def test_interpret_reports_missing_versions_and_nan_distinctly() -> None:
    r = reading()
    interpret(
        r,
        q("traffic", metric="istio_requests_total"),
        "vector",
        vector(({"destination_version": "v1", "response_code": "200"}, "5")),
    )
    assert r.problems == [
        'no istio_requests_total series for the candidate (destination_version="v2") in the last 300s'
    ]
    r = reading()
    interpret(r, q("traffic", metric="istio_requests_total"), "vector", [])
    assert r.problems[0].startswith(
        'no istio_requests_total series for either version (destination_version=~"v1|v2")'
    )
    r = reading()
    interpret(
        r,
        q("traffic", metric="m"),
        "vector",
        vector(({"destination_version": "v1"}, "NaN"), ({"destination_version": "v2"}, "+Inf")),
    )
    assert r.problems == [
        'm is NaN for the stable (destination_version="v1"): not a number',
        'm is +Inf for the candidate (destination_version="v2"): not a number',
    ]
    r = reading()
    interpret(r, q("traffic", metric="m"), "matrix", [])
    assert r.problems == ["Prometheus answered m with a matrix, not an instant vector"]


def test_interpret_custom_answers() -> None:
    r = reading()
    interpret(r, q("custom", check="conv", version="v1"), "vector", vector(({}, "0.25")))
    interpret(r, q("custom", check="conv", version="v2"), "scalar", [1700000000.0, "0.5"])
    stable, candidate = r.version_counts()
    assert (stable.custom, candidate.custom, r.problems) == ({"conv": 0.25}, {"conv": 0.5}, [])

    r = reading()  # without {{ version }}: split by whichever label carries the versions
    interpret(r, q("custom", check="c"), "vector", vector(({"version": "v2"}, "2"), ({"version": "v1"}, "1")))
    stable, candidate = r.version_counts()
    assert (stable.custom, candidate.custom, r.problems) == ({"c": 1.0}, {"c": 2.0}, [])

    r = reading()  # one unlabelled number without {{ version }}: the same value for both
    interpret(r, q("custom", check="c"), "scalar", [1700000000.0, "3"])
    assert [c.custom for c in r.version_counts()] == [{"c": 3.0}, {"c": 3.0}]

    r = reading()
    interpret(r, q("custom", check="c", version="v2"), "vector", [])
    interpret(r, q("custom", check="c", version="v1"), "vector", vector(({"a": "1"}, "1"), ({"a": "2"}, "1")))
    interpret(r, q("custom", check="d", version="v1"), "scalar", [1700000000.0, "NaN"])
    interpret(r, q("custom", check="e"), "vector", vector(({"version": "v1"}, "1"), ({"version": "v9"}, "1")))
    assert r.problems == [
        "custom check 'c' returned no data for the candidate (v2) in the last 300s",
        "custom check 'c' returned 2 series for the stable (v1); aggregate it to one, e.g. sum(...)",
        "custom check 'd' is nan for the stable (v1): not a number (a division by zero?)",
        "custom check 'e' has no series for the candidate (v2); a query without {{ version }} must return "
        "one series per version",
    ]
    assert not math.isnan(sum(r.version_counts()[0].custom.values()))


def test_interpret_custom_never_credits_one_version_with_anothers_value() -> None:
    # Without {{ version }}: a lone series labelled with stable's version is stable's only.
    r = reading()
    interpret(r, q("custom", check="c"), "vector", vector(({"version": "v1"}, "7")))
    stable, candidate = r.version_counts()
    assert (stable.custom, candidate.custom) == ({"c": 7.0}, {})
    assert r.problems == [
        "custom check 'c' has no series for the candidate (v2); a query without {{ version }} must "
        "return one series per version"
    ]
    # A lone labelled series that names no version says nothing about either.
    r = reading()
    interpret(r, q("custom", check="c"), "vector", vector(({"job": "scorer"}, "7")))
    assert [c.custom for c in r.version_counts()] == [{}, {}] and len(r.problems) == 2
    # Two series for one version are not silently overwritten: aggregate them.
    r = reading()
    interpret(
        r,
        q("custom", check="c"),
        "vector",
        vector(
            ({"version": "v1", "pod": "a"}, "1"),
            ({"version": "v1", "pod": "b"}, "9"),
            ({"version": "v2"}, "1"),
        ),
    )
    assert [c.custom for c in r.version_counts()] == [{}, {}]
    assert r.problems == [
        "custom check 'c' returned several series for the stable (v1); aggregate them to one per version, "
        "e.g. sum by (destination_version) (...)"
    ]
    # With {{ version }}: the candidate's query answering with stable's series is not the candidate's.
    r = reading()
    interpret(r, q("custom", check="c", version="v2"), "vector", vector(({"version": "v1"}, "7")))
    assert r.version_counts()[1].custom == {}
    assert r.problems == [
        "custom check 'c' returned the stable's series (v1) for the candidate (v2); "
        "put {{ version }} in its version matcher"
    ]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "1e308",
            'm is 1e+308 for the candidate (destination_version="v2"): implausibly large (above 1e+15)',
        ),
        ("-3", 'm is -3 for the candidate (destination_version="v2"): a count cannot be negative'),
        ("-Inf", 'm is -Inf for the candidate (destination_version="v2"): not a number'),
        ("twelve", 'm has a value that is not a number for the candidate (destination_version="v2")'),
        (True, 'm has a value that is not a number for the candidate (destination_version="v2")'),
    ],
)
def test_interpret_refuses_counts_the_judge_must_not_trust(value: object, problem: str) -> None:
    r = reading()
    items = [
        {"metric": {"destination_version": "v1"}, "value": [1.0, "10"]},
        {"metric": {"destination_version": "v2"}, "value": [1.0, value]},
    ]
    interpret(r, q("traffic", metric="m"), "vector", items)
    assert r.problems == [problem]
    assert r.version_counts()[1].requests == 0


def test_interpret_custom_refuses_absurd_values_but_allows_negative_ones() -> None:
    r = reading()
    interpret(r, q("custom", check="c", version="v1"), "scalar", [1.0, "-0.5"])
    interpret(r, q("custom", check="c", version="v2"), "scalar", [1.0, "-1e300"])
    assert r.version_counts()[0].custom == {"c": -0.5}
    assert r.problems == [
        "custom check 'c' is -1e+300 for the candidate (v2): implausibly large (above 1e+15)"
    ]


@pytest.mark.parametrize(
    ("path", "count"),
    [("minimal.yaml", 2), ("fraud-scorer-canary.yaml", 7), ("blue-green.yaml", 3), ("local-demo.yaml", 4)],
)
def test_shipped_policies_plan_one_query_per_family(path: str, count: int) -> None:
    loaded = load_policy_text((Path(__file__).parent.parent / "policies" / path).read_text(), path)
    queries = plan_queries(loaded, "60s")
    assert len(queries) == count
    # Every family the checks need, once (custom checks: once per version).
    families = [q.family for q in queries if q.family != "custom"]
    assert len(families) == len(set(families))
