"""The rules a schema cannot say: steps rising, bounds that fit the check's kind, durations
in order, safe names and values, every number finite. Pure; each problem names its field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from mesh_canary.checks import REGISTRY, CheckKind
from mesh_canary.checks.base import is_number
from mesh_canary.checks.custom import BUILTIN_PLACEHOLDERS
from mesh_canary.core.durations import DURATION_PATTERN, parse_duration
from mesh_canary.core.policy.defaults import default, default_check_name
from mesh_canary.core.policy.problems import (
    IDENT,
    MAX_DEPTH,
    Problem,
    format_path,
    nearest,
    number,
    path_order,
    words,
)
from mesh_canary.core.policy.schema import CHECK_FIELDS, schema_problems

_DURATION = re.compile(DURATION_PATTERN)
_MAX_NUMBER = 1e15  # far beyond any bound, count or latency a policy means; floats stay exact
_MAX_DURATION_S = 30 * 86400.0  # no step, window or timeout of a rollout lasts a month


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seconds(value: Any) -> float | None:
    """Seconds of a duration string that the schema accepts; None otherwise (reported there)."""
    if isinstance(value, str) and _DURATION.fullmatch(value):
        return parse_duration(value)
    return None


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
    return [
        *_step_problems(spec),
        *_timing_problems(spec),
        *_variable_problems(spec),
        *_route_problems(spec),
        *_destination_problems(spec),
        *_registry_problems(spec),
        *_checks_problems(spec),
    ]


def _step_problems(spec: dict[str, Any]) -> list[Problem]:
    """Steps rise, end at 100, and judge the candidate before it takes all traffic."""
    out: list[Problem] = []
    steps = _dict(spec.get("canary")).get("steps")
    if isinstance(steps, list) and steps and all(is_number(s) for s in steps):
        # Order is checked even beside out-of-range steps: every problem in one pass.
        for i in range(1, len(steps)):
            if steps[i] == steps[i - 1]:
                out.append(
                    Problem(
                        f"spec.canary.steps[{i}]",
                        f"{number(steps[i])} is repeated: each step must be above the one before",
                    )
                )
            elif steps[i] < steps[i - 1]:
                out.append(
                    Problem(
                        f"spec.canary.steps[{i}]",
                        f"{number(steps[i])} is not above the previous step {number(steps[i - 1])}",
                    )
                )
        # Out of range, the schema says so; the end is judged once every step is in range.
        in_range = all(1 <= s <= 100 for s in steps)
        if in_range and steps == [100]:
            # 100 at once would send every request to an unjudged candidate.
            out.append(
                Problem(
                    "spec.canary.steps[0]",
                    "a canary needs at least one step below 100, so the candidate is judged before it "
                    "takes all traffic (e.g. [10, 50, 100]); use strategy blueGreen to switch at once",
                )
            )
        elif in_range and steps[-1] != 100:
            out.append(
                Problem(
                    f"spec.canary.steps[{len(steps) - 1}]",
                    f"the last step is {number(steps[-1])}, but it must be 100 (the last step promotes)",
                )
            )
    return out


def _timing_problems(spec: dict[str, Any]) -> list[Problem]:
    """Durations in order: a step, the no-data timeout and the interval fit together."""
    out: list[Problem] = []
    metrics = _dict(spec.get("metrics"))
    canary = _dict(spec.get("canary"))
    analysis = _dict(spec.get("analysis"))
    min_step_text = canary.get("minStepDuration", default("canary", "minStepDuration"))
    max_step_text = canary.get("maxStepDuration", default("canary", "maxStepDuration"))
    shown = analysis.get("interval", default("analysis", "interval"))
    no_data_text = analysis.get("noDataTimeout", default("analysis", "noDataTimeout"))
    min_step, max_step = _seconds(min_step_text), _seconds(max_step_text)
    interval, no_data = _seconds(shown), _seconds(no_data_text)
    if min_step is not None and max_step is not None and min_step > max_step:
        out.append(
            Problem(
                "spec.canary.minStepDuration",
                f"{min_step_text} is longer than maxStepDuration {max_step_text}",
            )
        )
    if interval is not None and interval < 1.0:
        out.append(
            Problem("spec.analysis.interval", f"{analysis['interval']} is shorter than the minimum 1s")
        )
    elif interval is not None:
        if no_data is not None and no_data < interval:
            out.append(
                Problem(
                    "spec.analysis.noDataTimeout",
                    f"{no_data_text} is shorter than the analysis interval {shown}",
                )
            )
        if max_step is not None and max_step < interval:
            out.append(
                Problem(
                    "spec.canary.maxStepDuration",
                    f"{max_step_text} is shorter than the analysis interval {shown}",
                )
            )
    timeout = _seconds(metrics.get("timeout"))
    if timeout is not None and timeout <= 0:
        out.append(Problem("spec.metrics.timeout", "must be longer than 0s"))
    return out


def _variable_problems(spec: dict[str, Any]) -> list[Problem]:
    """Custom queries' variables: identifiers, and not the built-in placeholders."""
    out: list[Problem] = []
    metrics = _dict(spec.get("metrics"))
    variables = _dict(metrics.get("variables"))
    for key in variables:
        if not IDENT.fullmatch(str(key)):
            out.append(
                Problem(
                    format_path(["spec", "metrics", "variables", key]),
                    f"{str(key)!r} is not a valid variable name: use letters, digits and _, "
                    "not starting with a digit",
                )
            )
        elif key in BUILTIN_PLACEHOLDERS:
            out.append(
                Problem(
                    format_path(["spec", "metrics", "variables", key]),
                    f"{key} is a built-in placeholder and cannot be redefined",
                )
            )
    return out


def _route_problems(spec: dict[str, Any]) -> list[Problem]:
    """spec.virtualService.routes / spec.route.rules: no repeats; indexes and Service backends
    only where the kind has them (exactly one of the two fields is the schema's rule)."""
    field, key = ("route", "rules") if "route" in spec else ("virtualService", "routes")
    ref = _dict(spec.get(field))
    kind = ref.get("kind", "VirtualService")
    out: list[Problem] = []
    parts = ref.get(key)
    seen: set[Any] = set()
    for i, part in enumerate(parts if isinstance(parts, list) else []):
        if not isinstance(part, str | int) or isinstance(part, bool):
            continue  # reported by the schema
        at = f"spec.{field}.{key}[{i}]"
        if isinstance(part, int) and kind == "VirtualService":
            out.append(Problem(at, "a VirtualService's http routes are chosen by name, not by index"))
        elif part in seen:
            what = "route" if field == "virtualService" else "rule"
            out.append(Problem(at, f"the {what} {part!r} is listed twice"))
        seen.add(part)
    if kind == "InferenceService":
        out += _inference_service_problems(spec, field, parts)
    if kind == "HTTPRoute":
        for role in ("stable", "candidate", "fallback"):
            if _dict(_dict(spec.get(role)).get("destination")).get("subset") is not None:
                out.append(
                    Problem(
                        f"spec.{role}.destination.subset",
                        "an HTTPRoute's backends are Services: name this version by its Service (host), "
                        "not by a subset",
                    )
                )
    return out


def _inference_service_problems(spec: dict[str, Any], field: str, parts: Any) -> list[Problem]:
    """A KServe canary splits one InferenceService between two predictor revisions, nothing more."""
    out: list[Problem] = []
    if parts:
        out.append(
            Problem(f"spec.{field}.rules", "an InferenceService has no rules to choose; leave rules out")
        )
    for role in ("stable", "candidate"):
        if _dict(_dict(spec.get(role)).get("destination")).get("subset") is not None:
            out.append(
                Problem(
                    f"spec.{role}.destination.subset",
                    "an InferenceService's versions are its predictor revisions: name the revision as the host",
                )
            )
    if spec.get("fallback") is not None:
        out.append(
            Problem("spec.fallback", "an InferenceService canary has no third destination for a fallback")
        )
    if spec.get("strategy") == "blueGreen":
        out.append(Problem("spec.strategy", "an InferenceService canary cannot mirror traffic: use canary"))
    return out


def _registry_problems(spec: dict[str, Any]) -> list[Problem]:
    """A version named in the model registry needs the registry."""
    if "registry" in spec:
        return []
    return [
        Problem(
            f"spec.{role}.model", "names a model registry version, but spec.registry (trackingUri) is not set"
        )
        for role in ("stable", "candidate")
        if _dict(spec.get(role)).get("model") is not None
    ]


def _destination_problems(spec: dict[str, Any]) -> list[Problem]:
    """Stable, candidate and fallback are told apart, in routing and in metrics."""
    out: list[Problem] = []
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
    return out


def _checks_problems(spec: dict[str, Any]) -> list[Problem]:
    """Each check's own rules (from its kind), and unique names."""
    out: list[Problem] = []
    analysis = _dict(spec.get("analysis"))
    variables = frozenset(str(k) for k in _dict(_dict(spec.get("metrics")).get("variables")))
    checks = analysis.get("checks")
    if isinstance(checks, list):
        names: dict[str, int] = {}
        for i, check in enumerate(checks):
            if not isinstance(check, dict):
                continue
            out.extend(_check_problems(i, check, variables))
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


def _check_problems(i: int, check: dict[str, Any], variables: frozenset[str]) -> list[Problem]:
    at = f"spec.analysis.checks[{i}]"
    metric = check.get("metric")
    kind = REGISTRY.get(metric) if isinstance(metric, str) else None
    if kind is None:
        return []  # reported by the schema
    out = _field_problems(at, kind, check) + _bound_value_problems(at, kind, check)
    out += [
        Problem(f"{at}.{key}", f"this required field is missing: {why}")
        for key, why in kind.required.items()
        if key not in check
    ]
    out += [Problem(f"{at}.{key}" if key else at, message) for key, message in kind.rules(check, variables)]
    return out


def _field_problems(at: str, kind: CheckKind, check: Mapping[str, Any]) -> list[Problem]:
    """Fields the kind does not take, and a missing bound."""
    out = []
    allowed = {"metric", "name", *kind.fields}
    for key in check:
        if key not in allowed and key in CHECK_FIELDS:
            takes = words(sorted(allowed - {"metric", "name"}), "and")
            out.append(Problem(f"{at}.{key}", f"{kind.name} checks do not use {key}; they take {takes}"))
    bounds = kind.bounds
    if not any(b in check for b in bounds):
        wanted = bounds[0] if len(bounds) == 1 else f"at least one of {words(bounds)}"
        out.append(Problem(at, f"the {kind.name} check sets no bound; give it {wanted}"))
    return out


def _bound_value_problems(at: str, kind: CheckKind, check: Mapping[str, Any]) -> list[Problem]:
    """Bounds in the kind's units: durations only for latencies, shares within 0..1,
    nothing below 0 for a value that never is."""
    out = []
    is_share = kind.is_share(check)
    # Durations are latencies; every other bound is a plain number.
    takes_duration = kind.takes_duration(check)
    for key in ("max", "maxIncrease"):
        value = check.get(key)
        if isinstance(value, str) and _DURATION.fullmatch(value) and not takes_duration:
            what = "a share between 0 and 1" if is_share else "a number"
            out.append(Problem(f"{at}.{key}", f"{value!r} is a duration, but this check's {key} is {what}"))
    if kind.never_negative:
        for key in ("max", "min"):
            value = check.get(key)
            if is_number(value) and value < 0:
                out.append(
                    Problem(f"{at}.{key}", f"{number(value)} is negative; this metric is never below 0")
                )
    if is_share:
        for key in ("max", "min", "maxIncrease", "maxDecrease"):
            value = check.get(key)
            if is_number(value) and value > 1:
                out.append(
                    Problem(f"{at}.{key}", f"{number(value)} is above 1; this bound is a share (0..1)")
                )
    return out


def _number_problems(doc: Any) -> list[Problem]:
    """NaN, infinities and absurdly large numbers anywhere: a comparison with NaN is always
    false, so a NaN bound would silently switch its check off."""
    out: list[Problem] = []
    stack: list[tuple[Any, list[Any]]] = [(doc, [])]
    while stack:
        node, parts = stack.pop()
        if len(parts) > MAX_DEPTH:
            continue
        if isinstance(node, dict):
            stack.extend((v, [*parts, k]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, [*parts, i]) for i, v in enumerate(node))
        elif isinstance(node, float) and math.isnan(node):
            out.append(Problem(format_path(parts), "must be a finite number, not NaN"))
        elif isinstance(node, float) and math.isinf(node):
            out.append(
                Problem(format_path(parts), f"must be a finite number, not {'-' if node < 0 else ''}infinity")
            )
        elif is_number(node) and abs(node) > _MAX_NUMBER:
            # str() of a huge int raises (Python's digit limit): count its digits from its bits.
            shown = (
                f"{node:.3g}"
                if isinstance(node, float)
                else f"a {int(node.bit_length() * 0.30103) + 1}-digit number"
            )
            out.append(Problem(format_path(parts), f"{shown} is too large (at most {_MAX_NUMBER:g})"))
    return out


def _without_bad_numbers(node: Any, depth: int) -> Any:
    """A copy with every number `_number_problems` reports replaced by None."""
    if depth > MAX_DEPTH:
        return node
    if isinstance(node, dict):
        return {k: _without_bad_numbers(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_bad_numbers(v, depth + 1) for v in node]
    if is_number(node) and not abs(node) <= _MAX_NUMBER:  # NaN fails every comparison
        return None
    return node


_DURATION_FIELDS = (
    ("canary", "minStepDuration"),
    ("canary", "maxStepDuration"),
    ("blueGreen", "previewDuration"),
    ("blueGreen", "postSwitchWindow"),
    ("analysis", "interval"),
    ("analysis", "noDataTimeout"),
    ("analysis", "burstDuration"),
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
    for phase, calls in _dict(spec.get("hooks")).items():
        for i, call in enumerate(calls if isinstance(calls, list) else []):
            found.append((["spec", "hooks", phase, i, "timeout"], _dict(call).get("timeout")))
    out = []
    for parts, value in found:
        seconds = _seconds(value)
        if seconds is not None and not seconds <= _MAX_DURATION_S:
            out.append(
                Problem(
                    format_path(parts),
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
    problems = numbers + schema_problems(tame, bad) + _semantic_problems(tame)
    unique = list(dict.fromkeys(problems))
    order = path_order(doc)
    return sorted(unique, key=lambda p: nearest(p.path, order) or 0)
