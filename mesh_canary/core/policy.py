"""The rollout policy: validation against the schema and the semantic rules, and defaults.

One JSON Schema (`policy.schema.json`, next to this module) checks the shape of a policy;
the rules a schema cannot say (steps rising, bounds that fit the metric, safe PromQL values)
are checked here. Every problem is reported, each with the path of its field and a sentence.
Pure: the only file read is the schema, once, at import.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, TypeGuard, cast

import jsonschema
import yaml

from mesh_canary.core.durations import parse_duration
from mesh_canary.core.model import (
    AnalysisSpec,
    BlueGreenSpec,
    CanarySpec,
    Check,
    Destination,
    MetricKind,
    MetricsSpec,
    Policy,
    VersionSpec,
    VirtualServiceRef,
    Webhook,
)
from mesh_canary.errors import BadInput

__all__ = [
    "DEFAULT_CHECKS",
    "PolicyError",
    "Problem",
    "crd_spec_schema",
    "default_check_name",
    "load_policy",
    "load_policy_text",
    "policy_schema",
    "resource_document",
    "spec_schema",
    "validate_document",
    "validate_text",
]

_SCHEMA: dict[str, Any] = json.loads(
    files("mesh_canary.core").joinpath("policy.schema.json").read_text(encoding="utf-8")
)

DEFAULT_CHECKS: tuple[dict[str, Any], ...] = (
    {"metric": "errorRate", "maxIncreaseRatio": 0.25, "max": 0.05},
    {"metric": "latency", "quantile": 0.99, "maxIncreaseRatio": 0.2},
)
"""The checks a policy gets when it leaves out `spec.analysis.checks`."""

# Placeholders a custom query may use besides metrics.variables (as the Prometheus adapter fills them).
BUILTIN_PLACEHOLDERS = frozenset({"version", "window"})
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION = re.compile(r"(\d+(\.\d+)?(ms|s|m|h|d))+")
_MAX_DEPTH = 32  # no field of the schema lies half as deep
_MAX_VALUES = 100_000  # YAML aliases can expand a small file into a huge tree
_MAX_NUMBER = 1e15  # far beyond any bound, count or latency a policy means; floats stay exact
_MAX_DURATION_S = 30 * 86400.0  # no step, window or timeout of a rollout lasts a month


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy: the field's path and a sentence saying what is wrong."""

    path: str  # e.g. "spec.canary.steps[2]"; "" for the document as a whole
    message: str
    line: int | None = None  # 1-based, when the policy came from YAML text
    column: int | None = None
    source: str | None = None  # file name or "<policy>", when known

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class PolicyError(BadInput):
    """The policy is invalid (exit 2); `problems` lists every reason."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"the policy has {len(self.problems)} problems:\n" + "\n".join(
                f"  {p}" for p in self.problems
            )
        super().__init__(text)

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


# --------------------------------------------------------------------------- schemas


def policy_schema() -> dict[str, Any]:
    """The whole document's JSON Schema (a copy)."""
    return copy.deepcopy(_SCHEMA)


def spec_schema() -> dict[str, Any]:
    """The schema of `spec` alone (a copy), as written in policy.schema.json."""
    return copy.deepcopy(cast(dict[str, Any], _SCHEMA["properties"]["spec"]))


def crd_spec_schema() -> dict[str, Any]:
    """`spec_schema()` in the structural OpenAPI v3.0 form a Kubernetes CRD accepts.

    The apiserver forbids `additionalProperties: false` (it rejects unknown fields through
    strict field validation instead), spells exclusive bounds as booleans, and cannot type a
    value that may be a number or a string: those fields are left open and checked by
    `validate_document` when the controller loads the resource.
    """

    def convert(node: Any) -> Any:
        if isinstance(node, list):
            return [convert(x) for x in node]
        if not isinstance(node, dict):
            return node
        if "anyOf" in node and "type" not in node:
            return {"description": node.get("description", ""), "x-kubernetes-preserve-unknown-fields": True}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "additionalProperties" and value is False:
                continue
            if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
                out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
                out[key] = True
                continue
            if key in ("properties",):
                out[key] = {k: convert(v) for k, v in value.items()}
            else:
                out[key] = convert(value)
        return out

    return cast(dict[str, Any], convert(spec_schema()))


def _pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    # Python's `$` also matches before a trailing newline; RE2 (the apiserver's) does not.
    if not isinstance(instance, str):
        return
    anchored_end = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
    if not re.search(anchored_end, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern_keyword})
_VALIDATOR = _Validator(_SCHEMA)


# --------------------------------------------------------------------------- paths and words


def _format_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.fullmatch(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


def _describe(value: Any) -> str:
    if value is None:
        return "an empty value (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}

_PATTERN_WORDS = {
    r"^(\d+(\.\d+)?(ms|s|m|h|d))+$": "is not a duration (use e.g. 500ms, 30s, 5m, 1h)",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "is not a valid name: use letters, digits and _, not starting with a digit",
    r"^[A-Za-z_][A-Za-z0-9_.-]*$": (
        "is not a valid check name: use letters, digits, _, - and ., starting with a letter or _"
    ),
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$": (
        "is not a valid Kubernetes name: use lower-case letters, digits, - and ., "
        "starting and ending with a letter or digit"
    ),
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": (
        "is not a valid Kubernetes namespace: use lower-case letters, digits and -, "
        "starting and ending with a letter or digit"
    ),
    r"^[A-Za-z0-9_]([-A-Za-z0-9_.]*[A-Za-z0-9_])?$": (
        "is not a valid host or subset name: use letters, digits, -, _ and ."
    ),
    r'^[^"\\\n\r{}]+$': (
        "must not contain a double quote, a backslash, a newline or braces, "
        "which could break out of a PromQL label string"
    ),
    r'^[^"\\\n\r{}]*$': (
        "must not contain a double quote, a backslash, a newline or braces, "
        "which could break out of a PromQL label string"
    ),
    r'^[^"\\\n\r]+$': "must not contain a double quote, a backslash or a newline",
    r'^https?://[^\s"]+$': "is not an http:// or https:// URL",
    r"^[-._a-zA-Z0-9]+$": "is not a valid Secret key: use letters, digits, -, _ and .",
}


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _schema_problems(doc: Any, skip: frozenset[str] = frozenset()) -> list[Problem]:
    """The schema's problems, but none at the paths in ``skip`` (already reported better)."""
    out: list[Problem] = []
    errors = [e for e in _VALIDATOR.iter_errors(doc) if _format_path(e.absolute_path) not in skip]
    # A value of the wrong type needs one sentence, not one more per rule of its type.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    for error in errors:
        if error.validator == "enum" and tuple(error.absolute_path) in mistyped:
            continue
        out.extend(_translate(error))
    return out


def _translate(error: Any) -> list[Problem]:
    """Turn one jsonschema error into plain sentences, each naming its field."""
    parts = list(error.absolute_path)
    path = _format_path(parts)
    kind = error.validator
    value = error.validator_value
    instance = error.instance
    schema = error.schema
    if kind == "additionalProperties":
        known = list(schema.get("properties", {}))
        out = []
        for key in instance:
            if key in known:
                continue
            hint = difflib.get_close_matches(str(key), known, n=1)
            msg = "unknown field"
            if hint:
                msg += f"; did you mean {hint[0]}?"
            elif known:
                msg += f"; {path or 'the document'} takes {', '.join(known)}"
            out.append(Problem(_format_path([*parts, key]), msg))
        return out
    if kind == "required":
        missing = [k for k in value if not isinstance(instance, dict) or k not in instance]
        return [Problem(_format_path([*parts, k]), "this required field is missing") for k in missing]
    if kind == "type":
        want = value if isinstance(value, list) else [value]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in want)
        msg = f"must be {words}, not {_describe(instance)}"
        if "string" in want and isinstance(instance, (bool, int, float)):
            msg += ' (quote it in YAML: "...")'
        return [Problem(path, msg)]
    if kind == "enum":
        return [Problem(path, f"must be one of {', '.join(map(str, value))}, not {_describe(instance)}")]
    if kind == "minimum":
        return [Problem(path, f"{_number(instance)} is below the minimum {_number(value)}")]
    if kind == "maximum":
        return [Problem(path, f"{_number(instance)} is above the maximum {_number(value)}")]
    if kind in ("exclusiveMinimum", "exclusiveMaximum") and {"exclusiveMinimum", "exclusiveMaximum"} <= set(
        schema
    ):
        low, high = _number(schema["exclusiveMinimum"]), _number(schema["exclusiveMaximum"])
        return [Problem(path, f"must lie strictly between {low} and {high}, not {_number(instance)}")]
    if kind == "exclusiveMinimum":
        return [Problem(path, f"{_number(instance)} is not above {_number(value)}")]
    if kind == "exclusiveMaximum":
        return [Problem(path, f"{_number(instance)} is not below {_number(value)}")]
    if kind == "pattern":
        words = _PATTERN_WORDS.get(value, f"does not match the pattern {value}")
        return [Problem(path, f"{instance!r} {words}")]
    if kind == "minItems":
        return [Problem(path, "must not be empty" if value == 1 else f"needs at least {value} items")]
    if kind == "minLength":
        return [Problem(path, "must not be empty")]
    if kind == "maxLength":
        return [Problem(path, f"is longer than {value} characters")]
    if kind == "oneOf" and all(set(b) == {"required"} for b in value):
        names = [b["required"][0] for b in value]
        both = [n for n in names if isinstance(instance, dict) and n in instance]
        if both:
            return [Problem(path, f"set only one of {' and '.join(names)}, not both")]
        return [Problem(path, f"needs one of {' or '.join(names)}")]
    if kind == "anyOf":
        # A field that takes a number or a duration: report the branch that fits the type.
        for sub in error.context or ():
            if sub.validator != "type":
                return _translate(sub)
        return [Problem(path, f"must be a number or a duration such as 500ms, not {_describe(instance)}")]
    return [Problem(path, str(error.message))]


# --------------------------------------------------------------------------- semantic rules


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_num(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _seconds(value: Any) -> float | None:
    """Seconds of a duration string that the schema accepts; None otherwise (reported there)."""
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return parse_duration(value)
    return None


def _ms(value: Any) -> float | None:
    """Milliseconds of a latency written as a duration or a number of ms."""
    if _is_num(value):
        return float(value)
    seconds = _seconds(value)
    return None if seconds is None else seconds * 1000.0


_ACCURACY_FAMILY = ("accuracy", "precision", "recall", "f1")
_BOUNDS: dict[str, tuple[str, ...]] = {
    "errorRate": ("max", "maxIncrease", "maxIncreaseRatio"),
    "latency": ("max", "maxIncrease", "maxIncreaseRatio"),
    **{m: ("maxDecrease", "min") for m in _ACCURACY_FAMILY},
    "predictionDrift": ("maxPSI",),
    "featureDrift": ("maxPSI",),
    "trafficShare": ("maxDeviation",),
    "custom": ("max", "min", "maxIncrease", "maxIncreaseRatio", "maxDecrease"),
}
_QUALIFIERS: dict[str, tuple[str, ...]] = {
    "latency": ("quantile", "slowerThan"),
    "accuracy": ("minLabeled",),
    **{m: ("class", "minLabeled") for m in ("precision", "recall", "f1")},
    "featureDrift": ("feature",),
    "custom": ("query",),
}
_CHECK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SCHEMA_CHECK_FIELDS = frozenset(
    _SCHEMA["properties"]["spec"]["properties"]["analysis"]["properties"]["checks"]["items"]["properties"]
)


def _words(names: Iterable[str], last: str = "or") -> str:
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def default_check_name(check: Mapping[str, Any]) -> str:
    """The name a check gets when it has none: the metric plus its qualifier."""
    metric = str(check.get("metric", ""))
    if metric == "latency":
        quantile = check.get("quantile")
        if _is_num(quantile):
            return f"latency-p{float(quantile) * 100:g}"
        slower = _ms(check.get("slowerThan"))
        if slower is not None:
            return f"latency-slower-than-{slower:g}ms"
    if metric in ("precision", "recall", "f1") and isinstance(check.get("class"), str):
        return f"{metric}-{check['class']}"
    if metric == "featureDrift" and isinstance(check.get("feature"), str):
        return f"featureDrift-{check['feature']}"
    return metric


def _check_problems(i: int, check: dict[str, Any], variables: set[str]) -> list[Problem]:
    at = f"spec.analysis.checks[{i}]"
    metric = check.get("metric")
    if not isinstance(metric, str) or metric not in _BOUNDS:
        return []  # reported by the schema
    out: list[Problem] = []
    bounds = _BOUNDS[metric]
    allowed = {"metric", "name", *bounds, *_QUALIFIERS.get(metric, ())}
    for key in check:
        if key not in allowed and key in _SCHEMA_CHECK_FIELDS:
            takes = _words(sorted(allowed - {"metric", "name"}), "and")
            out.append(Problem(f"{at}.{key}", f"{metric} checks do not use {key}; they take {takes}"))
    if not any(b in check for b in bounds):
        wanted = bounds[0] if len(bounds) == 1 else f"at least one of {_words(bounds)}"
        out.append(Problem(at, f"the {metric} check sets no bound; give it {wanted}"))

    slower = "slowerThan" in check
    is_share = metric in ("errorRate", *_ACCURACY_FAMILY) or (metric == "latency" and slower)
    if metric == "latency":
        if "quantile" in check and slower:
            out.append(Problem(f"{at}.slowerThan", "a latency check takes quantile or slowerThan, not both"))
        elif "quantile" not in check and not slower:
            out.append(Problem(at, "a latency check needs quantile (e.g. 0.99) or slowerThan (e.g. 250ms)"))
    # Durations are latencies; every other bound is a plain number.
    takes_duration = metric == "latency" and not slower
    for key in ("max", "maxIncrease"):
        value = check.get(key)
        if isinstance(value, str) and _DURATION.fullmatch(value) and not takes_duration:
            what = "a share between 0 and 1" if is_share else "a number"
            out.append(Problem(f"{at}.{key}", f"{value!r} is a duration, but this check's {key} is {what}"))
    if metric != "custom":
        for key in ("max", "min"):
            value = check.get(key)
            if _is_num(value) and value < 0:
                out.append(
                    Problem(f"{at}.{key}", f"{_number(value)} is negative; this metric is never below 0")
                )
    if is_share:
        for key in ("max", "min", "maxIncrease", "maxDecrease"):
            value = check.get(key)
            if _is_num(value) and value > 1:
                out.append(
                    Problem(f"{at}.{key}", f"{_number(value)} is above 1; this bound is a share (0..1)")
                )
    if metric in ("precision", "recall", "f1") and "class" not in check:
        out.append(Problem(f"{at}.class", f"this required field is missing: {metric} checks judge one class"))
    if metric == "featureDrift" and "feature" not in check:
        out.append(
            Problem(
                f"{at}.feature", "this required field is missing: featureDrift checks judge one input feature"
            )
        )
    if metric == "custom":
        name = check.get("name")
        if "name" not in check:
            out.append(Problem(f"{at}.name", "this required field is missing: a custom check needs a name"))
        elif isinstance(name, str) and _CHECK_NAME.fullmatch(name) and not _IDENT.fullmatch(name):
            out.append(
                Problem(
                    f"{at}.name",
                    f"{name!r} is not a valid custom check name: use letters, digits and _, "
                    "not starting with a digit",
                )
            )
        query = check.get("query")
        if "query" not in check:
            out.append(Problem(f"{at}.query", "this required field is missing: a custom check needs a query"))
        elif isinstance(query, str) and query:
            used = [m.group(1).strip() for m in _PLACEHOLDER.finditer(query)]
            known = BUILTIN_PLACEHOLDERS | variables
            for placeholder in dict.fromkeys(used):
                if placeholder not in known:
                    out.append(
                        Problem(
                            f"{at}.query",
                            f"the placeholder {{{{ {placeholder} }}}} is neither built in "
                            f"({_words(sorted(BUILTIN_PLACEHOLDERS), 'and')}) nor in spec.metrics.variables",
                        )
                    )
    return out


def _destination_key(version: Any) -> tuple[Any, Any, Any] | None:
    dest = _dict(_dict(version).get("destination"))
    if "host" not in dest:
        return None
    return (dest.get("host"), dest.get("subset"), dest.get("port"))


def _metrics_version(version: Any) -> Any:
    v = _dict(version)
    if "metricsVersion" in v:
        return v["metricsVersion"]
    if "version" in v:
        return v["version"]
    dest = _dict(v.get("destination"))
    return dest.get("subset", dest.get("host"))


def _semantic_problems(doc: Any) -> list[Problem]:
    spec = _dict(_dict(doc).get("spec"))
    out: list[Problem] = []

    steps = _dict(spec.get("canary")).get("steps")
    if isinstance(steps, list) and steps and all(_is_num(s) and 1 <= s <= 100 for s in steps):
        for i in range(1, len(steps)):
            if steps[i] == steps[i - 1]:
                out.append(
                    Problem(
                        f"spec.canary.steps[{i}]",
                        f"{_number(steps[i])} is repeated: each step must be above the one before",
                    )
                )
            elif steps[i] < steps[i - 1]:
                out.append(
                    Problem(
                        f"spec.canary.steps[{i}]",
                        f"{_number(steps[i])} is not above the previous step {_number(steps[i - 1])}",
                    )
                )
        if steps == [100]:
            # 100 at once would send every request to an unjudged candidate.
            out.append(
                Problem(
                    "spec.canary.steps[0]",
                    "a canary needs at least one step below 100, so the candidate is judged before it "
                    "takes all traffic (e.g. [10, 50, 100]); use strategy blueGreen to switch at once",
                )
            )
        elif steps[-1] != 100:
            out.append(
                Problem(
                    f"spec.canary.steps[{len(steps) - 1}]",
                    f"the last step is {_number(steps[-1])}, but it must be 100 (the last step promotes)",
                )
            )

    canary = _dict(spec.get("canary"))
    analysis = _dict(spec.get("analysis"))
    metrics = _dict(spec.get("metrics"))
    min_step = _seconds(canary.get("minStepDuration", "1m"))
    max_step = _seconds(canary.get("maxStepDuration", "15m"))
    interval = _seconds(analysis.get("interval", "30s"))
    no_data = _seconds(analysis.get("noDataTimeout", "5m"))
    if min_step is not None and max_step is not None and min_step > max_step:
        out.append(
            Problem(
                "spec.canary.minStepDuration",
                f"{canary.get('minStepDuration', '1m')} is longer than maxStepDuration "
                f"{canary.get('maxStepDuration', '15m')}",
            )
        )
    if interval is not None and interval < 1.0:
        out.append(
            Problem("spec.analysis.interval", f"{analysis['interval']} is shorter than the minimum 1s")
        )
    elif interval is not None:
        shown = analysis.get("interval", "30s")
        if no_data is not None and no_data < interval:
            out.append(
                Problem(
                    "spec.analysis.noDataTimeout",
                    f"{analysis.get('noDataTimeout', '5m')} is shorter than the analysis interval {shown}",
                )
            )
        if max_step is not None and max_step < interval:
            out.append(
                Problem(
                    "spec.canary.maxStepDuration",
                    f"{canary.get('maxStepDuration', '15m')} is shorter than the analysis interval {shown}",
                )
            )
    timeout = _seconds(metrics.get("timeout"))
    if timeout is not None and timeout <= 0:
        out.append(Problem("spec.metrics.timeout", "must be longer than 0s"))

    variables = _dict(metrics.get("variables"))
    for key in variables:
        if not _IDENT.fullmatch(str(key)):
            out.append(
                Problem(
                    _format_path(["spec", "metrics", "variables", key]),
                    f"{str(key)!r} is not a valid variable name: use letters, digits and _, "
                    "not starting with a digit",
                )
            )
        elif key in BUILTIN_PLACEHOLDERS:
            out.append(
                Problem(
                    _format_path(["spec", "metrics", "variables", key]),
                    f"{key} is a built-in placeholder and cannot be redefined",
                )
            )

    routes = _dict(spec.get("virtualService")).get("routes")
    if isinstance(routes, list):
        seen_routes: set[Any] = set()
        for i, route in enumerate(routes):
            if not isinstance(route, str):
                continue  # reported by the schema
            if route in seen_routes:
                out.append(
                    Problem(f"spec.virtualService.routes[{i}]", f"the route {route!r} is listed twice")
                )
            seen_routes.add(route)

    stable, candidate = spec.get("stable"), spec.get("candidate")
    stable_key, candidate_key = _destination_key(stable), _destination_key(candidate)
    if stable_key is not None and stable_key == candidate_key:
        out.append(
            Problem(
                "spec.candidate.destination",
                "the candidate routes to the same destination as stable; use another host or subset",
            )
        )
    fallback_key = _destination_key(spec.get("fallback"))
    if fallback_key is not None and fallback_key in (stable_key, candidate_key):
        out.append(
            Problem("spec.fallback.destination", "must differ from the stable and candidate destinations")
        )
    stable_mv, candidate_mv = _metrics_version(stable), _metrics_version(candidate)
    same_destination = stable_key is not None and stable_key == candidate_key
    if isinstance(stable_mv, str) and stable_mv == candidate_mv and not same_destination:
        out.append(
            Problem(
                "spec.candidate",
                f"stable and candidate both carry the metrics version {stable_mv!r}, so their metrics cannot "
                "be told apart; set different version or metricsVersion",
            )
        )

    checks = analysis.get("checks")
    if isinstance(checks, list):
        names: dict[str, int] = {}
        for i, check in enumerate(checks):
            if not isinstance(check, dict):
                continue
            out.extend(_check_problems(i, check, {str(k) for k in variables}))
            name = check["name"] if isinstance(check.get("name"), str) else default_check_name(check)
            if name in names:
                where = "name" if "name" in check else "metric"
                hint = "" if "name" in check else "; give one of them a name"
                out.append(
                    Problem(
                        f"spec.analysis.checks[{i}].{where}",
                        f"the check name {name!r} is already used by spec.analysis.checks[{names[name]}]{hint}",
                    )
                )
            else:
                names[name] = i
    return out


# --------------------------------------------------------------------------- validation


def _path_order(doc: Any) -> dict[str, int]:
    """Every path in the document, in document order, so problems can be listed in that order."""
    order: dict[str, int] = {}

    def walk(node: Any, parts: list[Any]) -> None:
        order.setdefault(_format_path(parts), len(order))
        if len(parts) > _MAX_DEPTH:  # no field of the schema lies this deep
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*parts, key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, [*parts, i])

    walk(doc, [])
    return order


def _nearest(path: str, table: Mapping[str, Any]) -> Any:
    """The entry for `path`, or for its closest ancestor that the table has."""
    while path:
        if path in table:
            return table[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return table.get("")


def _number_problems(doc: Any) -> list[Problem]:
    """NaN, infinities and absurdly large numbers anywhere: a comparison with NaN is always
    false, so a NaN bound would silently switch its check off."""
    out: list[Problem] = []
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        node, parts = stack.pop()
        if len(parts) > _MAX_DEPTH:
            continue
        if isinstance(node, dict):
            stack.extend((v, [*parts, k]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*parts, i]) for i, v in enumerate(node))
        elif isinstance(node, float) and math.isnan(node):
            out.append(Problem(_format_path(parts), "must be a finite number, not NaN"))
        elif isinstance(node, float) and math.isinf(node):
            out.append(
                Problem(
                    _format_path(parts), f"must be a finite number, not {'-' if node < 0 else ''}infinity"
                )
            )
        elif _is_num(node) and abs(node) > _MAX_NUMBER:
            # str() of a huge int raises (Python's digit limit): count its digits from its bits.
            shown = (
                f"{node:.3g}"
                if isinstance(node, float)
                else f"a {int(node.bit_length() * 0.30103) + 1}-digit number"
            )
            out.append(Problem(_format_path(parts), f"{shown} is too large (at most {_MAX_NUMBER:g})"))
    return out


def _without_bad_numbers(node: Any, depth: int) -> Any:
    """A copy with every number `_number_problems` reports replaced by None."""
    if depth > _MAX_DEPTH:
        return node
    if isinstance(node, dict):
        return {k: _without_bad_numbers(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_bad_numbers(v, depth + 1) for v in node]
    if _is_num(node) and not abs(node) <= _MAX_NUMBER:  # NaN fails every comparison
        return None
    return node


_DURATION_FIELDS = (
    ("canary", "minStepDuration"),
    ("canary", "maxStepDuration"),
    ("blueGreen", "previewDuration"),
    ("blueGreen", "postSwitchWindow"),
    ("analysis", "interval"),
    ("analysis", "noDataTimeout"),
    ("metrics", "timeout"),
)


def _duration_problems(doc: Any) -> list[Problem]:
    """Durations beyond any sane rollout (`interval: 110000d`) overflow clocks and windows."""
    spec = _dict(_dict(doc).get("spec"))
    found: list[tuple[list[Any], Any]] = [
        (["spec", section, key], _dict(spec.get(section)).get(key)) for section, key in _DURATION_FIELDS
    ]
    checks = _dict(spec.get("analysis")).get("checks")
    for i, check in enumerate(checks if isinstance(checks, list) else []):
        for key in ("slowerThan", "max", "maxIncrease"):
            found.append((["spec", "analysis", "checks", i, key], _dict(check).get(key)))
    out = []
    for parts, value in found:
        seconds = _seconds(value)
        if seconds is not None and not seconds <= _MAX_DURATION_S:
            out.append(
                Problem(
                    _format_path(parts),
                    f"{value} is longer than the limit {_MAX_DURATION_S / 86400:g}d",
                )
            )
    return out


def validate_document(doc: object) -> list[Problem]:
    """Every problem in a policy document (already parsed from YAML/JSON); [] if it is valid."""
    numbers = _number_problems(doc) + _duration_problems(doc)
    # The number's own sentence says it better than the schema's (NaN is "not below 1" too).
    bad = frozenset(p.path for p in numbers)
    # The other rules see those numbers as null: formatting a 5000-digit integer raises, and
    # a NaN compares false with everything.
    tame = _without_bad_numbers(doc, 0) if numbers else doc
    problems = numbers + _schema_problems(tame, bad) + _semantic_problems(tame)
    unique = list(dict.fromkeys(problems))
    order = _path_order(doc)
    return sorted(unique, key=lambda p: _nearest(p.path, order) or 0)


# --------------------------------------------------------------------------- defaults and the typed policy


def _with_defaults(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a valid document with every default written in (camelCase, JSON-serialisable)."""
    d = copy.deepcopy(doc)
    meta = d["metadata"]
    meta.setdefault("namespace", "default")
    spec = d["spec"]
    vs = spec["virtualService"]
    vs.setdefault("namespace", meta["namespace"])
    vs.setdefault("routes", [])
    for role in ("stable", "candidate"):
        version = spec[role]
        dest = version["destination"]
        version.setdefault("version", dest.get("subset", dest["host"]))
        version.setdefault("metricsVersion", version["version"])
    spec.setdefault("strategy", "canary")
    canary = spec.setdefault("canary", {})
    canary.setdefault("steps", [5, 10, 25, 50, 100])
    canary["steps"] = [int(s) for s in canary["steps"]]
    canary.setdefault("minStepDuration", "1m")
    canary.setdefault("maxStepDuration", "15m")
    blue_green = spec.setdefault("blueGreen", {})
    blue_green.setdefault("mirrorPercent", 100)
    blue_green.setdefault("previewDuration", "10m")
    blue_green.setdefault("postSwitchWindow", "15m")
    analysis = spec.setdefault("analysis", {})
    analysis.setdefault("interval", "30s")
    analysis.setdefault("confidence", 0.99)
    analysis.setdefault("minRequests", 100)
    analysis.setdefault("noDataTimeout", "5m")
    checks = analysis.setdefault("checks", copy.deepcopy(list(DEFAULT_CHECKS)))
    for check in checks:
        check.setdefault("name", default_check_name(check))
        if check["metric"] in _ACCURACY_FAMILY:
            check.setdefault("minLabeled", analysis["minRequests"])
    metrics = spec.setdefault("metrics", {})
    metrics.setdefault("provider", "prometheus")
    metrics.setdefault("profile", "istio")
    metrics.setdefault("address", "http://prometheus.istio-system:9090")
    metrics.setdefault("versionLabel", "destination_version")
    metrics.setdefault("modelVersionLabel", "version")
    metrics.setdefault("timeout", "10s")
    metrics.setdefault("variables", {})
    spec.setdefault("gates", {}).setdefault("approval", "none")
    for notification in spec.setdefault("notifications", []):
        notification["webhook"].setdefault("format", "json")
    return d


def _destination(d: dict[str, Any]) -> Destination:
    return Destination(host=d["host"], subset=d.get("subset"), port=d.get("port"))


def _version(d: dict[str, Any]) -> VersionSpec:
    return VersionSpec(
        destination=_destination(d["destination"]), version=d["version"], metrics_version=d["metricsVersion"]
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check(d: dict[str, Any]) -> Check:
    latency_ms = d["metric"] == "latency" and "quantile" in d

    def bound(key: str) -> float | None:
        value = d.get(key)
        if value is None:
            return None
        return _ms(value) if latency_ms else float(value)

    slower = d.get("slowerThan")
    return Check(
        metric=cast(MetricKind, d["metric"]),
        name=d["name"],
        quantile=_opt_float(d.get("quantile")),
        slower_than_ms=None if slower is None else _ms(slower),
        max=bound("max"),
        min=_opt_float(d.get("min")),
        max_increase=bound("maxIncrease"),
        max_increase_ratio=_opt_float(d.get("maxIncreaseRatio")),
        max_decrease=_opt_float(d.get("maxDecrease")),
        min_labeled=None if d.get("minLabeled") is None else int(d["minLabeled"]),
        class_=d.get("class"),
        feature=d.get("feature"),
        max_psi=_opt_float(d.get("maxPSI")),
        max_deviation=_opt_float(d.get("maxDeviation")),
        query=d.get("query"),
    )


def _webhook(d: dict[str, Any]) -> Webhook:
    url_from = d.get("urlFrom", {})
    secret = url_from.get("secretKeyRef")
    return Webhook(
        url=d.get("url"),
        url_from_env=url_from.get("env"),
        url_from_secret=None if secret is None else {"name": secret["name"], "key": secret["key"]},
        format=d["format"],
    )


def _policy(d: dict[str, Any]) -> Policy:
    spec = d["spec"]
    canary, blue_green, analysis, metrics = (
        spec["canary"],
        spec["blueGreen"],
        spec["analysis"],
        spec["metrics"],
    )
    fallback = spec.get("fallback")
    return Policy(
        name=d["metadata"]["name"],
        namespace=d["metadata"]["namespace"],
        virtual_service=VirtualServiceRef(
            name=spec["virtualService"]["name"],
            namespace=spec["virtualService"]["namespace"],
            routes=tuple(spec["virtualService"]["routes"]),
        ),
        stable=_version(spec["stable"]),
        candidate=_version(spec["candidate"]),
        fallback=None if fallback is None else _destination(fallback["destination"]),
        strategy=spec["strategy"],
        canary=CanarySpec(
            steps=tuple(canary["steps"]),
            min_step_duration_s=parse_duration(canary["minStepDuration"]),
            max_step_duration_s=parse_duration(canary["maxStepDuration"]),
        ),
        blue_green=BlueGreenSpec(
            mirror_percent=int(blue_green["mirrorPercent"]),
            preview_duration_s=parse_duration(blue_green["previewDuration"]),
            post_switch_window_s=parse_duration(blue_green["postSwitchWindow"]),
        ),
        analysis=AnalysisSpec(
            interval_s=parse_duration(analysis["interval"]),
            confidence=float(analysis["confidence"]),
            min_requests=int(analysis["minRequests"]),
            no_data_timeout_s=parse_duration(analysis["noDataTimeout"]),
            checks=tuple(_check(c) for c in analysis["checks"]),
        ),
        metrics=MetricsSpec(
            provider=metrics["provider"],
            profile=metrics["profile"],
            address=metrics["address"],
            version_label=metrics["versionLabel"],
            model_version_label=metrics["modelVersionLabel"],
            timeout_s=parse_duration(metrics["timeout"]),
            variables=dict(metrics["variables"]),
        ),
        approval=spec["gates"]["approval"],
        notifications=tuple(_webhook(n["webhook"]) for n in spec["notifications"]),
        document=d,
    )


def resource_document(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The policy part of a ModelRollout read back from the apiserver.

    Drops what the apiserver adds (status, uid, resourceVersion, managedFields, ...), which
    the policy's schema would reject as unknown fields.
    """
    metadata = resource.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    kept = {
        k: copy.deepcopy(metadata[k]) for k in ("name", "namespace", "labels", "annotations") if k in metadata
    }
    doc: dict[str, Any] = {
        k: copy.deepcopy(resource[k]) for k in ("apiVersion", "kind", "spec") if k in resource
    }
    doc["metadata"] = kept
    return doc


def load_policy(doc: dict[str, Any]) -> Policy:
    """The typed policy, with every default filled in; raises PolicyError listing every problem."""
    problems = validate_document(doc)
    if problems:
        raise PolicyError(problems)
    return _policy(_with_defaults(doc))


# --------------------------------------------------------------------------- YAML text


def _yaml_problem(message: str, mark: Any, source: str) -> Problem:
    if mark is None:
        return Problem("", message, source=source)
    return Problem("", message, mark.line + 1, mark.column + 1, source)


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, tuple[int, int]], list[Problem]]:
    """The document, the line/column of every path in it, and problems found while parsing.

    The document is None when parsing stopped; then the problems say why.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
            if len(nodes) > 1:
                message = "the file holds more than one YAML document; a policy is exactly one"
                return None, {}, [_yaml_problem(message, nodes[1].start_mark, source)]
        too_big = _too_big(nodes[0]) if nodes else None
        if too_big:
            return None, {}, [_yaml_problem(too_big, nodes[0].start_mark, source)]
        if not nodes or not isinstance(nodes[0], yaml.MappingNode):
            message = (
                "the file holds no YAML mapping; a policy starts with apiVersion, kind, metadata and spec"
            )
            return None, {}, [_yaml_problem(message, nodes[0].start_mark if nodes else None, source)]
        problems = _duplicate_keys(nodes[0], [], source)
        data = loader.construct_document(nodes[0])
        return data, _marks(nodes[0]), problems
    except RecursionError:
        return (
            None,
            {},
            [_yaml_problem(f"the YAML is nested more than {_MAX_DEPTH} levels deep", None, source)],
        )
    except (ValueError, OverflowError) as e:
        # A value YAML recognises but Python cannot build: a 5000-digit integer (Python's
        # digit limit), a date such as 2024-13-45.
        reason = " ".join(str(e).split())[:200]
        if "integer string conversion" in reason:
            reason = "an integer has more than 4300 digits"
        return (
            None,
            {},
            [_yaml_problem(f"the YAML holds a value that cannot be read: {reason}", None, source)],
        )
    except yaml.YAMLError as e:
        reason = " ".join(str(getattr(e, "problem", None) or e).split())
        if getattr(e, "context", None):
            reason = f"{reason} ({e.context})"  # type: ignore[attr-defined]
        return (
            None,
            {},
            [_yaml_problem(f"the YAML does not parse: {reason}", getattr(e, "problem_mark", None), source)],
        )
    finally:
        if loader is not None:
            loader.dispose()


def _too_big(root: yaml.Node) -> str | None:
    """Why the node tree is too deep or, with aliases expanded, too large to be a policy."""
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > _MAX_DEPTH:
            return f"the YAML is nested more than {_MAX_DEPTH} levels deep"
        if count > _MAX_VALUES:
            return (
                f"the YAML holds more than {_MAX_VALUES} values (aliases expanded); a policy is far smaller"
            )
        if isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
    return None


def _duplicate_keys(node: yaml.Node, parts: list[Any], source: str) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in seen:
                    mark = key_node.start_mark
                    out.append(
                        Problem(
                            _format_path([*parts, key]),
                            "this key appears twice in the same mapping; YAML would keep only the last",
                            mark.line + 1,
                            mark.column + 1,
                            source,
                        )
                    )
                seen.add(key)
            out.extend(_duplicate_keys(value_node, [*parts, key], source))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.extend(_duplicate_keys(item, [*parts, i], source))
    return out


def _marks(root: yaml.Node) -> dict[str, tuple[int, int]]:
    marks: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()

    def walk(node: yaml.Node, parts: list[Any], mark: Any) -> None:
        marks.setdefault(_format_path(parts), (mark.line + 1, mark.column + 1))
        if id(node) in seen:  # aliases can make cycles
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    walk(value_node, [*parts, key_node.value], key_node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, [*parts, i], item.start_mark)

    walk(root, [], root.start_mark)
    return marks


def validate_text(text: str, source: str = "<policy>") -> list[Problem]:
    """Every problem in a policy written as YAML (or JSON) text, each with its line when known."""
    return _validate_text(text, source)[1]


def _validate_text(text: str, source: str) -> tuple[Any, list[Problem]]:
    data, marks, problems = _parse_yaml(text, source)
    if data is None:
        return None, problems
    found = validate_document(data)
    located = []
    for p in found:
        line, column = _nearest(p.path, marks) or (None, None)
        located.append(Problem(p.path, p.message, line, column, source))
    both = sorted(problems + located, key=lambda p: (p.line or 0, p.column or 0))
    return data, both


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse and load a policy from YAML text; raises PolicyError listing every problem."""
    data, problems = _validate_text(text, source)
    if problems:
        raise PolicyError(problems)
    return _policy(_with_defaults(data))
