"""The audit record of one rollout (core/audit.py) as `rollout history NAME --audit` shows
it: a line per entry for people, JSON lines (`-o json`) for export."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mesh_canary.present.view import json_safe, rfc3339
from mesh_canary.redact import redact, redact_value


def audit_entries(doc: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The entries (oldest first) and how many older ones were dropped, from a state file's
    document or a ModelRollout (its ``status.rollout``)."""
    status = doc.get("status")
    state = status.get("rollout") if isinstance(status, Mapping) else doc
    if not isinstance(state, Mapping):
        return [], 0
    entries = [dict(e) for e in state.get("audit") or () if isinstance(e, Mapping)]
    return [redact_value(json_safe(e)) for e in entries], int(state.get("auditDropped") or 0)


def audit_documents(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as `-o json|yaml` prints them: with the time also as RFC 3339."""
    return [{**e, "time": _time(e)} for e in entries]


def audit_json_lines(entries: list[dict[str, Any]]) -> str:
    """One JSON object per line, oldest first."""
    return "\n".join(json.dumps(e, sort_keys=True) for e in audit_documents(entries))


def audit_text(entries: list[dict[str, Any]], dropped: int) -> str:
    lines = [f"({dropped} older entries were dropped: the record keeps the last ones)"] if dropped else []
    lines += [f"{_time(e)}  {e.get('kind', '?')!s:<12} {redact(summary(e))}" for e in entries]
    return "\n".join(lines) if lines else "no audit entries recorded yet"


def summary(e: Mapping[str, Any]) -> str:
    """One entry in a sentence."""
    kind = e.get("kind")
    if kind == "verdict":
        checks = ", ".join(_check_words(c) for c in e.get("checks") or () if isinstance(c, Mapping))
        why = f" ({e['reason']})" if e.get("reason") else ""
        return f"step {e.get('step')} at {e.get('weight')}%: {e.get('decision')}{why}; {checks}"
    if kind == "write":
        w = e.get("weights") or {}
        what = "ROLLBACK " if e.get("rollback") else ""
        return f"{what}wrote {w.get('stable')}/{w.get('candidate')} by {e.get('who')}: {e.get('why')}"
    if kind == "command":
        effect = f"-> {e.get('phase')}" if e.get("changed", True) else "(changed nothing)"
        return f"{e.get('command')} by {e.get('by')} {effect}"
    if kind == "hook":
        answer = "yes" if e.get("ok") else f"failed: {e.get('reason')}"
        return f"{e.get('phase')} hooks: {answer}"
    if kind == "notification":
        return f"{e.get('event')} notification {e.get('sent')}"
    return json.dumps({k: v for k, v in e.items() if k not in ("at", "kind")}, sort_keys=True)


def _check_words(c: Mapping[str, Any]) -> str:
    est, lo, hi = c.get("estimate"), c.get("lower"), c.get("upper")
    value = "" if est is None else f" {est:.4g}"
    bounds = "" if lo is None or hi is None else f" [{lo:.4g}, {hi:.4g}]"
    return f"{c.get('name')} {c.get('verdict')}{value}{bounds}"


def _time(e: Mapping[str, Any]) -> str:
    at = e.get("at")
    return rfc3339(float(at)) if isinstance(at, (int, float)) else "-"
