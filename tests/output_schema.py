"""Every command's ``-o json`` document against the one JSON Schema of docs/output.md."""

from __future__ import annotations

from typing import Any

import jsonschema

from mesh_canary.present.view import output_schema

_SCHEMA = output_schema()
jsonschema.Draft202012Validator.check_schema(_SCHEMA)


def check_output(doc: Any, kind: str) -> None:
    """Raise unless ``doc`` is a valid ``kind`` document (a ``$defs`` name of the schema,
    or ``history``: a list of history entries)."""
    ref = {"history": {"type": "array", "items": {"$ref": "#/$defs/historyEntry"}}}.get(
        kind, {"$ref": f"#/$defs/{kind}"}
    )
    jsonschema.validate(doc, {**_SCHEMA, "oneOf": [ref]}, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(doc, _SCHEMA, cls=jsonschema.Draft202012Validator)  # and the whole schema
