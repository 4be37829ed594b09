"""Validate objects against a CustomResourceDefinition's schema, as a Kubernetes API server does.

A CRD's ``openAPIV3Schema`` is OpenAPI 3.0 with Kubernetes extensions, not JSON Schema;
`CrdValidator` converts it once so that ``jsonschema`` can check objects:

- ``x-kubernetes-int-or-string`` becomes ``anyOf: [integer, string]``;
- ``nullable: true`` adds ``null`` to the type;
- fields a node does not declare are rejected (``additionalProperties: false``) unless it
  has ``x-kubernetes-preserve-unknown-fields`` (the API server prunes them by default and
  rejects them with kubectl's ``fieldValidation=Strict``; rejecting is the stricter test);
- ``format: int32``/``int64`` become range checks, boolean ``exclusiveMinimum`` is rewritten;
- ``x-kubernetes-validations`` (CEL) rules are checked for the rules Istio's CRDs use
  (durations of at least 1ms, no ``*`` in label selectors) and the Gateway API's backendRef
  rule (a Service backend needs a port); an unknown rule raises at load time, so a rule is
  never skipped silently, except in the CRDs listed in `CEL_NOT_EVALUATED` (with the reason);
- ``oneOf``/``anyOf``/``not`` with ``required`` are already JSON Schema and stay as written.

`structural_problems` lists what a real API server would refuse in a CRD schema (the
rules of a "structural schema").
"""

from __future__ import annotations

import copy
import functools
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
import jsonschema.validators
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
ISTIO_DIR = pathlib.Path("/work/shared/istio")
VIRTUALSERVICE_CRD = ISTIO_DIR / "virtualservices.crd.yaml"
HTTPROUTE_CRD = REPO / "tests" / "data" / "gateway-api" / "gateway.networking.k8s.io_httproutes.yaml"
DESTINATIONRULE_CRD = ISTIO_DIR / "destinationrules.crd.yaml"
ISTIO_CRDS = [VIRTUALSERVICE_CRD, DESTINATIONRULE_CRD]
MODELROLLOUT_CRD = REPO / "manifests" / "crd" / "modelrollouts.yaml"


@functools.cache
def load_yaml(path: pathlib.Path) -> dict[str, Any]:
    """One YAML document (cached: the Istio CRDs are large). Do not modify the result."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with path.open() as f:
        return dict(yaml.load(f, Loader=loader))


@functools.cache
def validator_for(path: pathlib.Path) -> CrdValidator:
    """A validator for the storage version of the CRD in ``path`` (cached)."""
    return CrdValidator(load_yaml(path))


_GO_DURATION = re.compile(r"^-?(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _at_least_1ms(value: Any) -> bool:
    seconds = go_duration_seconds(value) if isinstance(value, str) else None
    return seconds is not None and seconds >= 0.001


# The CEL rules Istio's CRDs carry, as Python predicates over the field's value.
_KNOWN_CEL: dict[str, Any] = {
    "duration(self) >= duration('1ms')": _at_least_1ms,
    '!self.contains("*")': lambda v: "*" not in v,
    'self.all(key, !key.contains("*"))': lambda v: all("*" not in k for k in v),
    "self.all(key, key.size() != 0)": lambda v: all(k != "" for k in v),
    # Gateway API: a backendRef to a core Service names its port.
    "(size(self.group) == 0 && self.kind == 'Service') ? has(self.port) : true": lambda v: (
        "port" in v or v.get("group", "") != "" or v.get("kind", "Service") != "Service"
    ),
}

# CRDs whose other CEL rules the validator skips, and why. The HTTPRoute CRD carries ~50 rules
# about filters, path matches, parentRefs and timeouts: fields mesh-canary never writes (it
# changes backendRefs weights, its RequestMirror filter and its annotations only), so the
# objects the tests create are written valid and a skipped rule cannot hide a write of ours.
CEL_NOT_EVALUATED: dict[str, str] = {
    "httproutes.gateway.networking.k8s.io": "rules on fields mesh-canary never writes",
}


def _without_unknown_cel(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_unknown_cel(x) for x in node]
    if not isinstance(node, Mapping):
        return node
    out = {k: _without_unknown_cel(v) for k, v in node.items()}
    if "x-kubernetes-validations" in out:
        out["x-kubernetes-validations"] = [
            r for r in out["x-kubernetes-validations"] if r["rule"] in _KNOWN_CEL
        ]
    return out


def go_duration_seconds(text: str) -> float | None:
    if not _GO_DURATION.match(text):
        return None
    total = sum(float(n) * _GO_UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)", text))
    return -total if text.startswith("-") else total


def _cel(validator: Any, rules: list[dict[str, str]], instance: Any, schema: Any) -> Iterator[Any]:
    for rule in rules:
        if not _KNOWN_CEL[rule["rule"]](instance):
            yield jsonschema.ValidationError(rule.get("message", f"failed rule: {rule['rule']}"))


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"x-cel": _cel})

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def to_json_schema(node: Mapping[str, Any], *, in_junctor: bool = False) -> dict[str, Any]:
    """JSON Schema (2020-12) for one OpenAPI v3 node of a CRD schema."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties",):
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, Mapping)):
            out[key] = to_json_schema(value, in_junctor=in_junctor or key == "not")
        elif key in ("oneOf", "anyOf", "allOf"):
            out[key] = [to_json_schema(sub, in_junctor=True) for sub in value]
        elif key == "x-kubernetes-validations":
            for rule in value:
                if rule["rule"] not in _KNOWN_CEL:
                    raise ValueError(f"CEL rule {rule['rule']!r} is not supported by the test validator.")
            out["x-cel"] = value
        elif key.startswith("x-kubernetes-") or key in ("nullable", "description", "example", "externalDocs"):
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value and bound in node:
                out[key] = node[bound]
        else:
            out[key] = copy.deepcopy(value)
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if node.get(key) is True:
            out.pop("minimum" if key == "exclusiveMinimum" else "maximum", None)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if node.get("format") in _INT_RANGES:
        low, high = _INT_RANGES[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if (
        not in_junctor
        and node.get("type") == "object"
        and "additionalProperties" not in node
        and not preserve
    ):
        out["additionalProperties"] = False
        out.setdefault("properties", {})
    return out


def crd_version(crd: Mapping[str, Any], version: str | None = None) -> dict[str, Any]:
    """The CRD's entry for ``version`` (default: the storage version)."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version or (version is None and entry.get("storage")):
            return dict(entry)
    raise KeyError(f"CRD {crd['metadata']['name']} has no version {version or '(storage)'}")


def object_schema(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema for a whole object: the CRD schema plus the implicit apiVersion/kind/metadata."""
    schema = to_json_schema(openapi)
    props = schema.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = {"type": "object"}  # the server's own ObjectMeta rules apply instead
    return schema


def field_path(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


class CrdValidator:
    """Checks whole objects against one version of a CRD."""

    def __init__(self, crd: Mapping[str, Any], version: str | None = None) -> None:
        if crd["metadata"]["name"] in CEL_NOT_EVALUATED:
            crd = _without_unknown_cel(crd)
        entry = crd_version(crd, version)
        self.version = entry["name"]
        self.schema = object_schema(entry["schema"]["openAPIV3Schema"])
        _Validator.check_schema(self.schema)
        self._validator = _Validator(self.schema)

    def errors(self, obj: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(field path, message)`` for every problem; empty when the object is valid."""
        found = []
        for error in sorted(self._validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            leaf = min(error.context or [error], key=lambda e: -len(e.absolute_path))
            found.append((field_path(error), leaf.message if error.context else error.message))
        return found

    def validate(self, obj: Mapping[str, Any]) -> None:
        problems = self.errors(obj)
        if problems:
            raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems))


_ALLOWED = {
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "externalDocs",
    "example",
    "nullable",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_NOT_IN_JUNCTORS = {"description", "type", "default", "additionalProperties", "nullable"}


def _int_or_string_branch(node: Mapping[str, Any]) -> bool:
    # The one typed junctor Kubernetes allows, under x-kubernetes-int-or-string.
    return dict(node) in ({"type": "integer"}, {"type": "string"})


def structural_problems(
    node: Mapping[str, Any],
    path: str = "openAPIV3Schema",
    *,
    in_junctor: bool = False,
    needs_type: bool = True,
) -> list[str]:
    """What a Kubernetes API server would refuse in this CRD schema node (empty: fine)."""
    problems = []
    for key in node:
        if key not in _ALLOWED and not key.startswith("x-kubernetes-"):
            problems.append(f"{path}: {key!r} is not allowed in a CRD schema")
    if in_junctor and not _int_or_string_branch(node):
        problems += [
            f"{path}: {key!r} must not be set inside allOf/anyOf/oneOf/not"
            for key in _NOT_IN_JUNCTORS & set(node)
        ]
    exempt = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    if "type" in node and node["type"] not in _TYPES:
        problems.append(f"{path}: type {node['type']!r} must be one of {sorted(_TYPES)}")
    elif needs_type and not in_junctor and not exempt and "type" not in node:
        problems.append(f"{path}: type must be set")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties must not be false")
    if node.get("uniqueItems") is True:
        problems.append(f"{path}: uniqueItems must not be true")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if key in node and not isinstance(node[key], bool):
            problems.append(f"{path}: {key} must be a boolean in OpenAPI v3.0")
    for name, sub in (node.get("properties") or {}).items():
        problems += structural_problems(sub, f"{path}.properties.{name}", in_junctor=in_junctor)
    if isinstance(node.get("items"), Mapping):
        problems += structural_problems(node["items"], f"{path}.items", in_junctor=in_junctor)
    elif "items" in node:
        problems.append(f"{path}: items must be one schema")
    if isinstance(node.get("additionalProperties"), Mapping):
        problems += structural_problems(
            node["additionalProperties"], f"{path}.additionalProperties", in_junctor=in_junctor
        )
    for key in ("allOf", "oneOf", "anyOf"):
        for i, sub in enumerate(node.get(key) or []):
            problems += structural_problems(sub, f"{path}.{key}[{i}]", in_junctor=True)
    if isinstance(node.get("not"), Mapping):
        problems += structural_problems(node["not"], f"{path}.not", in_junctor=True)
    return problems
