"""The rollout policy: validation against the schema and the semantic rules, and defaults.

One JSON Schema (`policy.schema.json`, next to the core) checks the shape of a policy; the
rules a schema cannot say (steps rising, bounds that fit the check's kind, safe PromQL
values) are checked here too. Every problem is reported, each with the path of its field and
a sentence. Pure: the only file read is the schema, once, at import.

- ``source``: YAML text with the line of every field;
- ``schema``: the JSON Schema, its CRD form, and its errors in sentences;
- ``rules``: the semantic rules (each check's from its kind, mesh_canary.checks);
- ``defaults``: every default, in one place;
- ``build``: the typed policy, and the policy part of a ModelRollout resource.
"""

from __future__ import annotations

from mesh_canary.core.policy.build import load_policy, load_policy_text, resource_document
from mesh_canary.core.policy.defaults import DEFAULT_CHECKS, default_check_name
from mesh_canary.core.policy.problems import PolicyError, Problem
from mesh_canary.core.policy.rules import validate_document
from mesh_canary.core.policy.schema import crd_spec_schema, policy_schema, spec_schema
from mesh_canary.core.policy.source import validate_text

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
