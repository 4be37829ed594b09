"""PromQL for the Prometheus MetricsSource: building queries and reading answers, no I/O.

Everything here is pure so that the queries can be shown, tested and documented apart from
sending them (docs/prometheus.md lists them). ``plan_queries`` turns a policy and a window
into the few instant queries one analysis tick needs (one per metric family, each returning
both versions); ``interpret`` turns Prometheus's JSON answers back into per-version counts.

Safety: every value a policy puts into a query goes through ``quote``/``regex_quote``
(string- and regex-escaped), label names must be identifiers, and custom templates accept
only known placeholders, escaped for the context they sit in. A policy can choose values,
never the structure of a query.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mesh_canary.checks import REGISTRY, Signal, signals_of
from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Histogram, VersionCounts
from mesh_canary.errors import BadInput

__all__ = [
    "ISTIO_DURATION",
    "ISTIO_REQUESTS",
    "LABEL_NAME",
    "BatchIndex",
    "BatchSpec",
    "PromQLError",
    "Query",
    "checks_families",
    "format_window",
    "index_batch",
    "interpret",
    "label_name",
    "matcher",
    "plan_queries",
    "quote",
    "regex_escape",
    "regex_quote",
    "render_batch",
    "render_custom",
    "service_scope",
    "split_batch",
    "version_label",
]

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

ISTIO_REQUESTS = "istio_requests_total"
ISTIO_DURATION = "istio_request_duration_milliseconds_bucket"
# Envoy charges upstream_rq_completed and upstream_rq_<class>xx together for every answer,
# its own 503/504 for connect failures and resets included; upstream_rq_total misses the
# requests that never got a connection. So requests = rq_xx summed over classes.
ENVOY_RESPONSES = "envoy_cluster_upstream_rq_xx"
ENVOY_DURATION = "envoy_cluster_upstream_rq_time_bucket"
ENVOY_CLUSTER_LABEL = "envoy_cluster_name"
# KServe (serverless mode): Knative's queue-proxy next to each predictor pod counts the
# requests its model server answered, per revision (docs/kserve.md lists the labels used).
KSERVE_REQUESTS = "revision_app_request_count"
KSERVE_DURATION = "revision_app_request_latencies_bucket"
KSERVE_REVISION_LABEL = "revision_name"
KSERVE_NAMESPACE_LABEL = "namespace_name"
MODEL_PREDICTIONS = "model_predictions_total"
MODEL_FEEDBACK = "model_feedback_total"
MODEL_SCORE = "model_prediction_score_bucket"
MODEL_FEATURE = "model_feature_value_bucket"

# The largest number a count (one window's increase) or a custom value may have. Far above
# anything real (1e15 requests in a 5-minute window is 3e12 per second) and below 2**53,
# above which floats no longer hold whole counts exactly.
LARGEST = 1e15

Family = Literal["traffic", "latency", "confusion", "predictions", "features", "custom"]


class PromQLError(BadInput, ValueError):
    """A policy value that cannot be put into a query safely (one sentence says which)."""


@dataclass(frozen=True)
class BatchSpec:
    """A built-in family's query in parts, so that many rollouts can share one query.

    The query is ``sum by (by) (increase(metric{fixed, keyed label="value"..., version_label=~versions
    [, extra label=~values]}[window]))``. Rollouts whose specs have the same ``shape`` can be
    asked together: the batched query puts the union of their keyed, version and extra values in
    regex matchers and groups by the keyed labels too, so each of its groups is exactly one of a
    rollout's own groups (``render_batch``, ``split_batch``).
    """

    family: Family
    metric: str
    fixed: tuple[str, ...]  # rendered matchers every rollout's query has (reporter="destination")
    keyed: tuple[tuple[str, str], ...]  # (label, value) equality matchers picking the rollout's service
    version_label: str
    versions: tuple[str, ...]
    by: tuple[str, ...]  # the rollout's own grouping labels (the version label among them)
    window: str
    extra: tuple[str, tuple[str, ...]] | None = None  # (label, values): e.g. the features it reads

    @property
    def shape(self) -> tuple[Any, ...]:
        """What must be equal for two specs to share one query (everything but the values)."""
        return (
            self.family,
            self.metric,
            self.fixed,
            tuple(label for label, _ in self.keyed),
            self.version_label,
            self.by,
            self.window,
            None if self.extra is None else self.extra[0],
        )


@dataclass(frozen=True)
class Query:
    """One instant query and how to read its answer."""

    family: Family
    promql: str
    label: str  # the label whose values tell the versions apart in the answer
    metric: str  # the metric (or check) it reads, for messages
    check: str | None = None  # custom: the check's name
    version: str | None = None  # custom rendered for one version: its metrics version
    batch: BatchSpec | None = None  # how it can be shared with other rollouts (None: it cannot)


# --- escaping -------------------------------------------------------------------------------

_REGEX_META = re.compile(r"([\\.+*?()|\[\]{}^$])")


def label_name(name: str) -> str:
    """``name`` if it is a valid Prometheus label name, else PromQLError."""
    if not isinstance(name, str) or not LABEL_NAME.fullmatch(name):
        raise PromQLError(
            f"{name!r} is not a valid label name (letters, digits and _, not starting with a digit)"
        )
    return name


def _escape(value: str, quote_char: str = '"') -> str:
    """The body of a PromQL string literal holding ``value`` (Go string escapes)."""
    out = value.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
    return out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def quote(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal."""
    return '"' + _escape(str(value)) + '"'


def regex_escape(value: str) -> str:
    """``value`` as an RE2 regex that matches exactly it (Go's regexp.QuoteMeta)."""
    return _REGEX_META.sub(r"\\\1", str(value))


def regex_quote(values: Iterable[str]) -> str:
    """A quoted regex matching exactly one of ``values`` (for ``label=~...``)."""
    return quote("|".join(regex_escape(v) for v in values))


def matcher(label: str, op: Literal["=", "!=", "=~", "!~"], value: str | Sequence[str]) -> str:
    """``label<op>"value"``; for regex ops a sequence of values becomes an escaped alternation."""
    label_name(label)
    if op in ("=~", "!~"):
        values = [value] if isinstance(value, str) else list(value)
        return f"{label}{op}{regex_quote(values)}"
    if not isinstance(value, str):
        raise PromQLError(f"matcher {label}{op} takes one value, not {value!r}")
    return f"{label}{op}{quote(value)}"


def format_window(since: float, now: float) -> str:
    """The range of ``[since, now]`` in whole seconds, at least 1s (``300s``)."""
    seconds = round(now - since) if math.isfinite(now - since) else 1
    return f"{max(int(seconds), 1)}s"


# --- profiles -------------------------------------------------------------------------------


def version_label(policy: Policy) -> str:
    """The label that tells versions apart in the request metrics of the policy's profile.

    The envoy profile reads Envoy's per-cluster stats, where the cluster is named after the
    version; Istio's default ``destination_version`` there means "use envoy_cluster_name".
    The kserve profile reads Knative's per-revision metrics: the default means "revision_name".
    """
    label = policy.metrics.version_label
    if policy.metrics.profile == "envoy" and label == "destination_version":
        label = ENVOY_CLUSTER_LABEL
    if policy.metrics.profile == "kserve" and label == "destination_version":
        label = KSERVE_REVISION_LABEL
    return label_name(label)


def service_scope(policy: Policy) -> list[list[str]]:
    """Matchers that pick the policy's service out of Istio's metrics, one list per host.

    A host with no dot (``fraud-scorer``) is a service in the VirtualService's namespace;
    ``name.namespace`` and ``name.namespace.svc[.<cluster domain>]`` name the service and
    namespace; both become ``destination_service_name`` + ``destination_service_namespace``
    (independent of the cluster domain). Any other host (a ServiceEntry's) must equal
    ``destination_service``. Stable and candidate on different hosts give two lists.
    """
    return [[matcher(k, "=", v) for k, v in scope] for scope in _scope_pairs(policy)]


def _scope_pairs(policy: Policy) -> list[list[tuple[str, str]]]:
    """``service_scope`` as (label, value) pairs."""
    scopes: list[list[tuple[str, str]]] = []
    for host in (policy.stable.destination.host, policy.candidate.destination.host):
        parts = host.split(".")
        if len(parts) == 1:
            scope = [
                ("destination_service_name", host),
                ("destination_service_namespace", policy.virtual_service.namespace),
            ]
        elif len(parts) == 2 or parts[2] == "svc":
            scope = [("destination_service_name", parts[0]), ("destination_service_namespace", parts[1])]
        else:
            scope = [("destination_service", host)]
        if scope not in scopes:
            scopes.append(scope)
    return scopes


def _increase(metric: str, selectors: Sequence[Sequence[str]], window: str) -> str:
    """``increase(metric{...}[window])``; several selectors are joined with ``or``."""
    parts = [f"increase({metric}{{{','.join(sel)}}}[{window}])" for sel in selectors]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def _sum_by(labels: Sequence[str], expr: str) -> str:
    return f"sum by ({', '.join(label_name(x) for x in labels)}) ({expr})"


def checks_families(checks: Iterable[Check]) -> set[str]:
    """The signals (requests, errors, latency, confusion, ...) the checks read: each check
    kind declares its own (mesh_canary.checks)."""
    return set(signals_of(checks))


def _reads(check: Check, signal: Signal) -> bool:
    kind = REGISTRY.get(check.metric)
    return kind is not None and signal in kind.signals


def _versions(policy: Policy) -> tuple[str, str]:
    stable, candidate = policy.stable.metrics_version, policy.candidate.metrics_version
    if stable == candidate:
        raise PromQLError(
            f"stable and candidate carry the same metrics version {stable!r}; they cannot be told apart"
        )
    return stable, candidate


def plan_queries(policy: Policy, window: str) -> list[Query]:
    """The instant queries one read needs for the policy's checks, over ``window``.

    Raises PromQLError when a policy value cannot be used (bad label name, unknown
    placeholder, ...): a policy error, found before anything is sent.
    """
    if not re.fullmatch(r"[0-9]+s", window):
        raise PromQLError(f"window {window!r} is not a whole number of seconds such as 300s")
    versions = _versions(policy)
    families = checks_families(policy.analysis.checks)
    queries: list[Query] = []
    label = version_label(policy)
    by_version = matcher(label, "=~", versions)
    scopes: list[list[tuple[str, str]]] = [[]]  # each selector's (label, value) equality matchers

    # Each profile: its request counter, the label carrying the answer's code, its latency
    # histogram, and the selectors that pick the policy's service out of them.
    fixed: tuple[str, ...] = ()
    if policy.metrics.profile == "istio":
        fixed = ('reporter="destination"',)
        scopes = _scope_pairs(policy)
        selectors = [[*fixed, *(matcher(k, "=", v) for k, v in scope), by_version] for scope in scopes]
        # One query gives both: requests are the sum over codes, errors the 5xx codes.
        profile = (ISTIO_REQUESTS, "response_code", ISTIO_DURATION)
    elif policy.metrics.profile == "kserve":
        scopes = [[(KSERVE_NAMESPACE_LABEL, policy.route.namespace)]]
        selectors = [[matcher(KSERVE_NAMESPACE_LABEL, "=", policy.route.namespace), by_version]]
        # Knative's response_code is the numeric code, read like Istio's (5xx: errors).
        profile = (KSERVE_REQUESTS, "response_code", KSERVE_DURATION)
    else:
        selectors = [[by_version]]
        # One query gives both: requests are the sum over classes, errors class 5.
        profile = (ENVOY_RESPONSES, "envoy_response_code_class", ENVOY_DURATION)
    requests, code_label, duration = profile

    def batch(
        family: Family,
        metric: str,
        by: Sequence[str],
        keyed: Sequence[Sequence[tuple[str, str]]],
        vlabel: str,
        fixed: tuple[str, ...] = (),
        extra: tuple[str, tuple[str, ...]] | None = None,
    ) -> BatchSpec | None:
        if len(keyed) != 1:  # stable and candidate on two hosts: an `or` of two selectors, kept per rollout
            return None
        return BatchSpec(family, metric, fixed, tuple(keyed[0]), vlabel, versions, tuple(by), window, extra)

    if families & {"requests", "errors"}:
        by = [label, code_label]
        expr = _sum_by(by, _increase(requests, selectors, window))
        spec = batch("traffic", requests, by, scopes, label, fixed)
        queries.append(Query("traffic", expr, label, requests, batch=spec))
    if "latency" in families:
        by = [label, "le"]
        expr = _sum_by(by, _increase(duration, selectors, window))
        spec = batch("latency", duration, by, scopes, label, fixed)
        queries.append(Query("latency", expr, label, duration, batch=spec))

    model_label = label_name(policy.metrics.model_version_label)
    model_selector = [[matcher(model_label, "=~", versions)]]
    if "confusion" in families:
        by = [model_label, "predicted", "actual"]
        expr = _sum_by(by, _increase(MODEL_FEEDBACK, model_selector, window))
        spec = batch("confusion", MODEL_FEEDBACK, by, [[]], model_label)
        queries.append(Query("confusion", expr, model_label, MODEL_FEEDBACK, batch=spec))
    if "predictions" in families:
        by = [model_label, "class"]
        expr = _sum_by(by, _increase(MODEL_PREDICTIONS, model_selector, window))
        spec = batch("predictions", MODEL_PREDICTIONS, by, [[]], model_label)
        queries.append(Query("predictions", expr, model_label, MODEL_PREDICTIONS, batch=spec))
    if "features" in families:
        names = sorted({c.feature for c in policy.analysis.checks if _reads(c, "features") and c.feature})
        if names:
            selector = [[*model_selector[0], matcher("feature", "=~", names)]]
            by = [model_label, "feature", "le"]
            expr = _sum_by(by, _increase(MODEL_FEATURE, selector, window))
            spec = batch("features", MODEL_FEATURE, by, [[]], model_label, extra=("feature", tuple(names)))
            queries.append(Query("features", expr, model_label, MODEL_FEATURE, batch=spec))

    queries += _custom_queries(policy, versions, label, window)
    return queries


def _custom_queries(policy: Policy, versions: tuple[str, str], label: str, window: str) -> list[Query]:
    """Each custom check's own query: rendered once per version when it names the version."""
    queries: list[Query] = []
    for check in policy.analysis.checks:
        if not _reads(check, "custom"):
            continue
        if not check.query:
            raise PromQLError(f"custom check {check.name!r} has no query")
        if _uses_placeholder(check.query, "version"):
            for version in versions:
                text = render_custom(check.query, version, window, policy.metrics.variables)
                queries.append(Query("custom", text, label, check.name, check=check.name, version=version))
        else:
            text = render_custom(check.query, None, window, policy.metrics.variables)
            queries.append(Query("custom", text, label, check.name, check=check.name))
    return queries


# --- custom templates -------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_BARE_OK = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?|(?:[0-9]+(?:ms|s|m|h|d|w|y))+)$")


def _uses_placeholder(template: str, name: str) -> bool:
    return any(_placeholder_name(m) == name for m in _PLACEHOLDER.finditer(template))


def _placeholder_name(m: re.Match[str]) -> str | None:
    ident = _IDENT.match(m.group(1))
    return ident.group(1) if ident else None


def render_custom(
    template: str, version: str | None, window: str, variables: Mapping[str, str] | None = None
) -> str:
    """A custom check's PromQL with ``{{ version }}``, ``{{ window }}`` and ``{{ <variable> }}`` filled in.

    Each value is escaped for where it stands: inside a quoted string it is string-escaped
    (and regex-escaped too when the string follows ``=~``/``!~``); inside a comment it is
    string-escaped (so it cannot end the comment); outside quotes only numbers and durations
    are accepted. Unknown placeholders, and ``{{ version }}`` when ``version`` is None, are
    errors.
    """
    values: dict[str, str] = {}
    for name, value in (variables or {}).items():
        if name in ("version", "window"):
            raise PromQLError(f"metrics.variables must not define {name!r}: it is a built-in placeholder")
        label_name(name)
        values[name] = str(value)
    values["window"] = window
    if version is not None:
        values["version"] = version

    out: list[str] = []
    state = "code"  # code | "  | '  | `  | comment
    string_is_regex = False
    i = 0
    matches = {m.start(): m for m in _PLACEHOLDER.finditer(template)}
    while i < len(template):
        m = matches.get(i)
        if m is not None:
            placeholder = _placeholder_name(m)
            if placeholder is None or placeholder not in values:
                known = ", ".join("{{ " + k + " }}" for k in sorted(values))
                raise PromQLError(f"unknown placeholder {m.group(0)!r} in a custom query (known: {known})")
            out.append(_fill(placeholder, values[placeholder], state, string_is_regex))
            i = m.end()
            continue
        ch = template[i]
        out.append(ch)
        if state == "code":
            if ch in "\"'`":
                prefix = "".join(out[:-1]).rstrip()
                string_is_regex = prefix.endswith(("=~", "!~"))
                state = ch
            elif ch == "#":
                state = "comment"
        elif state == "comment":
            if ch == "\n":
                state = "code"
        elif state in "\"'":
            if ch == "\\" and i + 1 < len(template):
                out.append(template[i + 1])
                i += 1
            elif ch == state:
                state = "code"
        elif ch == "`":
            state = "code"
        i += 1
    if state in ('"', "'", "`"):
        raise PromQLError("a custom query has an unterminated string literal")
    return "".join(out)


def _fill(name: str, value: str, state: str, string_is_regex: bool) -> str:
    if state in ('"', "'"):
        return _escape(regex_escape(value) if string_is_regex else value, state)
    if state == "comment":
        return _escape(value)
    if state == "`":
        raise PromQLError(f"put {{{{ {name} }}}} in double quotes, not in a raw `...` string")
    if not _BARE_OK.match(value):
        raise PromQLError(
            f"{{{{ {name} }}}} stands outside quotes and its value {value!r} is not a number or a duration; "
            "put it in double quotes"
        )
    return value


# --- reading answers --------------------------------------------------------------------------


@dataclass
class _Counts:
    requests: float | None = None
    errors: float | None = None
    latency: dict[float, float] | None = None
    confusion: dict[tuple[str, str], float] = field(default_factory=dict)
    predictions: dict[str, float] = field(default_factory=dict)
    features: dict[str, dict[float, float]] = field(default_factory=dict)
    custom: dict[str, float] = field(default_factory=dict)


@dataclass
class Reading:
    """What the answers of one read amount to (filled by ``interpret``)."""

    stable_version: str
    candidate_version: str
    window: str
    counts: dict[str, _Counts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.counts = {self.stable_version: _Counts(), self.candidate_version: _Counts()}

    def role(self, version: str) -> str:
        return "stable" if version == self.stable_version else "candidate"

    def version_counts(self) -> tuple[VersionCounts, VersionCounts]:
        stable = self._build(self.counts[self.stable_version], self.stable_version)
        candidate = self._build(self.counts[self.candidate_version], self.candidate_version)
        return stable, candidate

    def _build(self, c: _Counts, version: str) -> VersionCounts:
        latency = _histogram(c.latency) if c.latency else None
        features = {name: _histogram(buckets) for name, buckets in c.features.items() if buckets}
        return VersionCounts(
            requests=c.requests or 0.0,
            errors=c.errors or 0.0,
            latency_ms=latency,
            confusion=dict(c.confusion),
            predictions=dict(c.predictions),
            features=features,
            custom=dict(c.custom),
        )


def _histogram(buckets: Mapping[float, float]) -> Histogram:
    """Cumulative counts by upper bound; made non-decreasing (extrapolated increases wobble)."""
    bounds = tuple(sorted(buckets))
    counts: list[float] = []
    running = 0.0
    for b in bounds:
        running = max(running, buckets[b])
        counts.append(running)
    return Histogram(bounds, tuple(counts))


def _value(raw: Any) -> float | None:
    """The number in a ``[t, "v"]`` sample, or None when it holds none (NaN/Inf are numbers here)."""
    try:
        text = raw[1]
    except (TypeError, IndexError, KeyError):
        return None
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _untrusted(value: float, count: bool) -> str | None:
    """Why ``value`` must not reach the judge, or None when it may.

    Counts are never negative; no number is NaN, infinite or absurdly large (one window's
    count above LARGEST, or a custom value whose magnitude is above it, is a broken exporter
    or an attack, and arithmetic on it loses meaning).
    """
    if not math.isfinite(value):
        return "not a number"
    if count and value < 0:
        return "a count cannot be negative"
    if abs(value) > LARGEST:
        return f"implausibly large (above {LARGEST:g})"
    return None


def _prom_number(value: float) -> str:
    """``value`` as Prometheus writes it (NaN, +Inf): our formatting, never the server's text."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:g}"


def _series(result: Any) -> list[tuple[dict[str, str], Any]] | None:
    """``[(labels, [t, "v"])...]`` of an instant vector, or None if ``result`` is not one."""
    if not isinstance(result, list):
        return None
    out = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict) or "value" not in item:
            return None
        out.append((item["metric"], item["value"]))
    return out


def interpret(reading: Reading, query: Query, result_type: str, result: Any) -> None:
    """Add one query's answer (``data.resultType``, ``data.result``) to ``reading``.

    Missing versions, NaN/Inf values and answers of the wrong shape become problems.
    """
    if query.family == "custom":
        _interpret_custom(reading, query, result_type, result)
        return
    series = _series(result) if result_type == "vector" else None
    if series is None:
        reading.problems.append(
            f"Prometheus answered {query.metric} with a {result_type}, not an instant vector"
        )
        return
    versions = (reading.stable_version, reading.candidate_version)
    seen: set[str] = set()
    not_numbers: set[str] = set()
    for labels, raw in series:
        version = labels.get(query.label)
        if version not in versions:
            continue
        seen.add(version)
        value = _value(raw)
        why = None if value is None else _untrusted(value, count=True)
        if value is None or why is not None:
            if version not in not_numbers:
                where = f"for the {reading.role(version)} ({query.label}={quote(version)})"
                reading.problems.append(
                    f"{query.metric} has a value that is not a number {where}"
                    if value is None
                    else f"{query.metric} is {_prom_number(value)} {where}: {why}"
                )
            not_numbers.add(version)
            continue
        _add(reading.counts[version], query, labels, value)
    missing = [v for v in versions if v not in seen]
    if len(missing) == 2:
        reading.problems.append(
            f"no {query.metric} series for either version ({query.label}=~{regex_quote(versions)}) "
            f"in the last {reading.window}: check metrics.profile, the version labels and the service"
        )
    elif missing:
        version = missing[0]
        reading.problems.append(
            f"no {query.metric} series for the {reading.role(version)} ({query.label}={quote(version)}) "
            f"in the last {reading.window}"
        )
    if query.family == "latency":
        for version in seen - not_numbers:
            buckets = reading.counts[version].latency or {}
            if math.inf not in buckets:
                reading.problems.append(
                    f'{query.metric} has no le="+Inf" bucket for the {reading.role(version)} ({version})'
                )


def _add(c: _Counts, query: Query, labels: Mapping[str, str], value: float) -> None:
    family = query.family
    if family == "traffic":
        c.requests = (c.requests or 0.0) + value
        is_5xx = (
            re.fullmatch(r"5[0-9][0-9]", labels.get("response_code", "")) is not None
            or labels.get("envoy_response_code_class") == "5"
        )
        c.errors = (c.errors or 0.0) + (value if is_5xx else 0.0)
    elif family == "latency":
        bound = _le(labels)
        if bound is not None:
            c.latency = c.latency or {}
            c.latency[bound] = c.latency.get(bound, 0.0) + value
    elif family == "confusion":
        key = (labels.get("predicted", ""), labels.get("actual", ""))
        c.confusion[key] = c.confusion.get(key, 0.0) + value
    elif family == "predictions":
        cls = labels.get("class", "")
        c.predictions[cls] = c.predictions.get(cls, 0.0) + value
    elif family == "features":
        bound = _le(labels)
        if bound is not None:
            buckets = c.features.setdefault(labels.get("feature", ""), {})
            buckets[bound] = buckets.get(bound, 0.0) + value


def _le(labels: Mapping[str, str]) -> float | None:
    try:
        bound = float(labels["le"])
    except (KeyError, ValueError, TypeError):
        return None
    return None if math.isnan(bound) else bound


def _interpret_custom(reading: Reading, query: Query, result_type: str, result: Any) -> None:
    """One custom check's value per version; a version without its own value is no data.

    With ``{{ version }}`` each rendered query answers for its version only. Without it the
    answer must carry each version's value in a series labelled with that version; a single
    number with no labels at all (a scalar, or ``sum(...)``) is a service-wide value judged
    for both. A series that names only one version never counts for the other: crediting
    the candidate with stable's value would pass a candidate nobody measured.
    """
    name = query.check or query.metric
    both = (reading.stable_version, reading.candidate_version)
    series = _series(result) if result_type == "vector" else None
    values: dict[str, float | None] | None
    if result_type == "scalar":
        values = dict.fromkeys((query.version,) if query.version is not None else both, _value(result))
    elif series is None:
        reading.problems.append(
            f"custom check {name!r} answered a {result_type}; it must be one number per version"
        )
        return
    elif not series:
        where = (
            f" for the {reading.role(query.version)} ({query.version})" if query.version is not None else ""
        )
        reading.problems.append(f"custom check {name!r} returned no data{where} in the last {reading.window}")
        return
    elif query.version is not None:
        values = _custom_for_version(reading, query, name, series)
    elif len(series) == 1 and not series[0][0]:
        values = dict.fromkeys(both, _value(series[0][1]))  # one unlabelled, service-wide number
    else:
        values = _custom_by_label(reading, query, name, series)
    if values is not None:
        _record_custom(reading, name, values)


def _custom_for_version(
    reading: Reading, query: Query, name: str, series: list[tuple[dict[str, str], Any]]
) -> dict[str, float | None] | None:
    """A query rendered for one version: one series, and not the other version's."""
    assert query.version is not None
    where = f" for the {reading.role(query.version)} ({query.version})"
    if len(series) > 1:
        reading.problems.append(
            f"custom check {name!r} returned {len(series)} series{where}; aggregate it to one, e.g. sum(...)"
        )
        return None
    labels, raw = series[0]
    named = _versions_named(labels, (reading.stable_version, reading.candidate_version), query.label)
    if named and query.version not in named:
        other = named[0]
        reading.problems.append(
            f"custom check {name!r} returned the {reading.role(other)}'s series ({other}){where}; "
            "put {{ version }} in its version matcher"
        )
        return None
    return {query.version: _value(raw)}


def _custom_by_label(
    reading: Reading, query: Query, name: str, series: list[tuple[dict[str, str], Any]]
) -> dict[str, float | None] | None:
    """No {{ version }}: each version's value comes from the series labelled with it."""
    both = (reading.stable_version, reading.candidate_version)
    values: dict[str, float | None] = {}
    duplicated: set[str] = set()
    for labels, raw in series:
        named = _versions_named(labels, both, query.label)
        if len(named) != 1:
            continue  # another version's series, or one that says nothing about whose it is
        if named[0] in values:
            duplicated.add(named[0])
        values[named[0]] = _value(raw)
    for version in both:
        if version in duplicated:
            reading.problems.append(
                f"custom check {name!r} returned several series for the {reading.role(version)} "
                f"({version}); aggregate them to one per version, e.g. sum by ({query.label}) (...)"
            )
        elif version not in values:
            reading.problems.append(
                f"custom check {name!r} has no series for the {reading.role(version)} ({version}); "
                "a query without {{ version }} must return one series per version"
            )
    return None if duplicated else values


def _record_custom(reading: Reading, name: str, values: dict[str, float | None]) -> None:
    """Each version's value, unless it is not a number the judge may trust (then: no data)."""
    for version, value in values.items():
        role = f"the {reading.role(version)} ({version})"
        if value is None:
            reading.problems.append(
                f"custom check {name!r} answered something that is not a number for {role}"
            )
        elif (why := _untrusted(value, count=False)) is not None:
            hint = " (a division by zero?)" if math.isnan(value) else ""
            reading.problems.append(f"custom check {name!r} is {value:g} for {role}: {why}{hint}")
        else:
            reading.counts[version].custom[name] = value


def _versions_named(labels: Mapping[str, Any], versions: tuple[str, str], label: str) -> list[str]:
    """The versions a series' labels name: by ``label`` if it holds one, else by any label."""
    if labels.get(label) in versions:
        return [labels[label]]
    return sorted({v for v in labels.values() if isinstance(v, str) and v in versions})


# --- one query for many rollouts ----------------------------------------------------------------

# The answer of a batched query, by (keyed label values, version): [(position in the answer,
# labels, sample)], so each rollout finds its own series without scanning everyone's.
BatchIndex = dict[tuple[tuple[str, ...], str], list[tuple[int, dict[str, str], Any]]]


def render_batch(specs: Sequence[BatchSpec]) -> str:
    """One query answering for every spec (all of one ``shape``), grouped by the keyed labels too.

    Every value goes through ``regex_quote``; the union of values may select more series than
    the specs' own (another rollout's service in another rollout's namespace): grouping by the
    keyed labels keeps them apart, and ``split_batch`` takes only a spec's own groups.
    """
    if not specs or len({s.shape for s in specs}) != 1:
        raise PromQLError("a batched query needs specs of one shape")
    first = specs[0]
    keyed = [label for label, _ in first.keyed]
    matchers = list(first.fixed)
    for i, label in enumerate(keyed):
        matchers.append(matcher(label, "=~", sorted({s.keyed[i][1] for s in specs})))
    matchers.append(matcher(first.version_label, "=~", sorted({v for s in specs for v in s.versions})))
    if first.extra is not None:
        values = sorted({v for s in specs if s.extra is not None for v in s.extra[1]})
        matchers.append(matcher(first.extra[0], "=~", values))
    by = list(dict.fromkeys([*keyed, *first.by]))
    return _sum_by(by, _increase(first.metric, [matchers], first.window))


def index_batch(spec: BatchSpec, result_type: str, result: Any) -> BatchIndex | None:
    """The answer of ``render_batch`` indexed for ``split_batch``; None if it is not an instant vector."""
    series = _series(result) if result_type == "vector" else None
    if series is None:
        return None
    keyed = [label for label, _ in spec.keyed]
    index: BatchIndex = {}
    for position, (labels, raw) in enumerate(series):
        key = (tuple(str(labels.get(label, "")) for label in keyed), str(labels.get(spec.version_label, "")))
        index.setdefault(key, []).append((position, labels, raw))
    return index


def split_batch(index: BatchIndex, spec: BatchSpec) -> list[dict[str, Any]]:
    """The instant vector ``spec``'s own query would have answered, from a batched answer.

    Its groups, in the order of the batched answer (Prometheus lists a ``sum by`` in the order
    its groups first appear among the selected series, and a rollout's series keep their
    order among everyone's), each with only the labels of the rollout's own ``sum by``.
    """
    own = tuple(value for _, value in spec.keyed)
    found = [item for version in dict.fromkeys(spec.versions) for item in index.get((own, version), [])]
    found.sort(key=lambda item: item[0])
    wanted = None if spec.extra is None else (spec.extra[0], set(spec.extra[1]))
    out: list[dict[str, Any]] = []
    for _, labels, raw in found:
        if wanted is not None and labels.get(wanted[0]) not in wanted[1]:
            continue
        out.append({"metric": {k: labels[k] for k in spec.by if k in labels}, "value": raw})
    return out
