"""The policy's JSON Schema (policy.schema.json, next to the core), its CRD form, and its
errors translated into plain sentences. The only file read is the schema, once, at import."""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterator
from importlib.resources import files
from typing import Any, cast

import jsonschema

from mesh_canary.checks import REGISTRY
from mesh_canary.core.events import EVENTS
from mesh_canary.core.policy.problems import Problem, format_path, number

SCHEMA: dict[str, Any] = json.loads(
    files("mesh_canary.core").joinpath("policy.schema.json").read_text(encoding="utf-8")
)
_CHECK: dict[str, Any] = SCHEMA["properties"]["spec"]["properties"]["analysis"]["properties"]["checks"][
    "items"
]
# The check kinds are the registry's: a new kind is one module and one line there.
_CHECK["properties"]["metric"]["enum"] = list(REGISTRY)
CHECK_FIELDS = frozenset(_CHECK["properties"])
"""Every field a check may have (which ones a kind takes: mesh_canary.checks)."""

# Notification targets: the event names are written once (core/events.py); Teams takes its URL
# and PagerDuty its routing key the way a webhook takes its URL (one shape, written once).
_TARGET: dict[str, Any] = SCHEMA["properties"]["spec"]["properties"]["notifications"]["items"]
_TARGET["properties"]["events"]["items"]["enum"] = list(EVENTS)
_WEBHOOK: dict[str, Any] = _TARGET["properties"]["webhook"]
_TARGET["properties"]["teams"]["properties"].update(copy.deepcopy(_WEBHOOK["properties"]))
del _TARGET["properties"]["teams"]["properties"]["format"]
_TARGET["properties"]["teams"]["oneOf"] = copy.deepcopy(_WEBHOOK["oneOf"])
_KEY_FROM: dict[str, Any] = _TARGET["properties"]["pagerduty"]["properties"]["routingKeyFrom"]
_KEY_FROM.update(
    {k: copy.deepcopy(v) for k, v in _WEBHOOK["properties"]["urlFrom"].items() if k != "description"}
)
for _source in _KEY_FROM["properties"].values():
    _source["description"] = _source["description"].replace("the URL", "the routing key")
NOTIFICATION_KINDS = tuple(k for k in _TARGET["properties"] if k not in ("events", "timeout"))
"""The kinds of notification target (mesh_canary.notify has one module per kind)."""


def policy_schema() -> dict[str, Any]:
    """The whole document's JSON Schema (a copy)."""
    return copy.deepcopy(SCHEMA)


def spec_schema() -> dict[str, Any]:
    """The schema of `spec` alone (a copy), as written in policy.schema.json."""
    return copy.deepcopy(cast(dict[str, Any], SCHEMA["properties"]["spec"]))


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
_VALIDATOR = _Validator(SCHEMA)


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
    r"^models:/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_-]+|/[1-9][0-9]*)$": (
        "is not a model registry URI: use models:/NAME@ALIAS or models:/NAME/VERSION"
    ),
    r"^[A-Za-z0-9_-]+$": "is not a valid alias: use letters, digits, _ and -",
    r"^[^\r\n]*$": "must not contain a newline",
    r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$": "is not a valid HTTP header name",
    r'^https?://[^\s"]+$': "is not an http:// or https:// URL",
    r"^[-._a-zA-Z0-9]+$": "is not a valid Secret key: use letters, digits, -, _ and .",
}


def schema_problems(doc: Any, skip: frozenset[str] = frozenset()) -> list[Problem]:
    """The schema's problems, but none at the paths in ``skip`` (already reported better)."""
    out: list[Problem] = []
    errors = [e for e in _VALIDATOR.iter_errors(doc) if format_path(e.absolute_path) not in skip]
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
    path = format_path(parts)
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
            out.append(Problem(format_path([*parts, key]), msg))
        return out
    if kind == "required":
        missing = [k for k in value if not isinstance(instance, dict) or k not in instance]
        return [Problem(format_path([*parts, k]), "this required field is missing") for k in missing]
    if kind == "type":
        want = value if isinstance(value, list) else [value]
        words = " or ".join(_TYPE_WORDS.get(str(t), str(t)) for t in want)
        msg = f"must be {words}, not {_describe(instance)}"
        if "string" in want and isinstance(instance, (bool, int, float)):
            msg += ' (quote it in YAML: "...")'
        bare = isinstance(instance, (int, float)) and not isinstance(instance, bool)
        if bare and str(schema.get("pattern", "")).endswith("(ms|s|m|h|d))+$"):
            # A duration needs its unit; quoting the bare number would not make it one.
            msg = f"{number(instance)} has no unit: write {number(instance)}s (a duration: e.g. 500ms, 30s, 5m, 1h)"
        return [Problem(path, msg)]
    if kind == "enum":
        return [Problem(path, f"must be one of {', '.join(map(str, value))}, not {_describe(instance)}")]
    value_problem = _value_problem(kind, value, instance, schema)
    if value_problem is not None:
        return [Problem(path, value_problem)]
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


def _value_problem(kind: str, value: Any, instance: Any, schema: Any) -> str | None:
    """The sentence for a value outside its bounds, pattern or length (None: another kind)."""
    if kind == "minimum":
        return f"{number(instance)} is below the minimum {number(value)}"
    if kind == "maximum":
        return f"{number(instance)} is above the maximum {number(value)}"
    if kind in ("exclusiveMinimum", "exclusiveMaximum") and {"exclusiveMinimum", "exclusiveMaximum"} <= set(
        schema
    ):
        low, high = number(schema["exclusiveMinimum"]), number(schema["exclusiveMaximum"])
        return f"must lie strictly between {low} and {high}, not {number(instance)}"
    if kind == "exclusiveMinimum":
        return f"{number(instance)} is not above {number(value)}"
    if kind == "exclusiveMaximum":
        return f"{number(instance)} is not below {number(value)}"
    if kind == "pattern":
        words = _PATTERN_WORDS.get(value, f"does not match the pattern {value}")
        return f"{instance!r} {words}"
    if kind == "minItems":
        return "must not be empty" if value == 1 else f"needs at least {value} items"
    if kind == "minLength":
        return "must not be empty"
    if kind == "maxLength":
        return f"is longer than {value} characters"
    return None
