"""Step hooks as data: which phases decide, what a hook's answer looks like, and the body
template's fields. The HTTP calls are the driver's (mesh_canary/run/hooks.py); the engine
only asks for them (``engine.RunHooks``) and reads their answers (``engine.hook_answered``)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh_canary.core.model import HOOK_FIELDS

PRE_ROLLOUT = "preRollout"
PRE_STEP = "preStep"
DURING_STEP = "duringStep"
CONFIRM_PROMOTION = "confirmPromotion"
POST_ROLLOUT = "postRollout"
ON_ROLLBACK = "onRollback"
assert set(HOOK_FIELDS) == {PRE_ROLLOUT, PRE_STEP, DURING_STEP, CONFIRM_PROMOTION, POST_ROLLOUT, ON_ROLLBACK}

# Phases whose answer decides something (kept in the state, so a restart resumes exactly);
# the others are reported, never judged.
DECIDING = frozenset({PRE_ROLLOUT, PRE_STEP, CONFIRM_PROMOTION})

# The fields a body template may use ({{ name }}); the driver fills them from the rollout.
TEMPLATE_FIELDS = ("name", "namespace", "hook", "phase", "step", "weight", "stable", "candidate", "reason")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z]+)\s*\}\}")


@dataclass(frozen=True)
class HookResult:
    """A phase's answer: ok when every call answered 2xx (the first failure stops a deciding
    phase). ``calls``: one record per call (name, status or error, attempts), for the audit."""

    phase: str
    ok: bool
    reason: str = ""
    at: float = 0.0
    calls: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "ok": self.ok,
            "reason": self.reason,
            "at": self.at,
            "calls": list(self.calls),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HookResult:
        return cls(
            str(d["phase"]),
            bool(d["ok"]),
            str(d.get("reason", "")),
            float(d.get("at", 0.0)),
            tuple(d.get("calls", ())),
        )


def render(template: str | None, fields: Mapping[str, Any]) -> str:
    """The body of a call: the template with its {{ field }}s filled (unknown ones left as
    written), or every field as a JSON object when there is no template."""
    if template is None:
        return json.dumps(dict(fields), sort_keys=True)
    return _PLACEHOLDER.sub(lambda m: str(fields.get(m[1], m[0])), template)
