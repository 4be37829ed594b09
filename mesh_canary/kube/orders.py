"""A person's order to a ModelRollout (pause, resume, approve, abort, promote --full, retry):
one annotation that the controller handles once per value (docs/controller.md). The
`rollout` verbs and the dashboard's buttons both go through here, and so does the rule of
which phases an order makes sense in (`refusal`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from mesh_canary.core.engine import Phase
from mesh_canary.kube.status import COMMAND_ANNOTATIONS

# verb -> the order's annotation word (resume is a pause set to false)
VERBS: dict[str, str] = {
    "abort": "abort",
    "approve": "approve",
    "pause": "pause",
    "resume": "pause",
    "promote-full": "promote",
    "retry": "retry",
    "restore-stable": "restore",
}
# A retry restarts a rollout that ended without promoting; any other end is final.
RETRYABLE_PHASES = frozenset({Phase.ROLLED_BACK.value, Phase.ABORTED.value})
# Orders a finished rollout (or one whose rollback is still being written) cannot take.
_LIVE_ONLY = frozenset({"promote-full", "approve", "pause", "resume"})


def request_id() -> str:
    """A new order's id: its time and a random tail, so that each order is handled once."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def order(verb: str) -> tuple[str, str]:
    """The annotation word and value of a new order ``verb``; KeyError for an unknown verb."""
    word = VERBS[verb]
    rid = request_id()
    value = {"pause": f"true@{rid}", "resume": f"false@{rid}", "promote-full": f"full@{rid}"}.get(verb, rid)
    return word, value


def annotation(word: str) -> str:
    return COMMAND_ANNOTATIONS[word]


def refusal(verb: str, name: str, status: Mapping[str, Any]) -> str | None:
    """Why ``verb`` cannot be ordered for a rollout whose status is ``status`` (one sentence
    naming the phase), or None when it can. The controller applies the same rule when it
    handles the order (a late order is ignored, never half-done)."""
    phase = str(status.get("phase") or "Pending")
    watching = (status.get("rollout") or {}).get("watchUntil") is not None  # after a rollback
    if verb == "restore-stable":  # on the fallback: back to stable; watching: keep stable, end it
        if (status.get("weights") or {}).get("fallback") or watching:
            return None
        return (
            f"{name} is not on its fallback: restore-stable brings traffic from the fallback back to stable"
        )
    if verb == "retry" and watching:
        return (
            f"{name} still watches stable after its rollback (spec.fallback.watchAfterRollback): "
            f"`mesh-canary rollout restore-stable {name}` ends the watch, then retry"
        )
    if verb == "retry":
        if phase in RETRYABLE_PHASES:
            return None
        return (
            f"{name} is {phase}: retry restarts only a RolledBack or Aborted rollout "
            f"(to steer a running one use pause/resume/abort; a promoted one is done: see `rollout next`)"
        )
    if verb in _LIVE_ONLY and phase in (*RETRYABLE_PHASES, Phase.SUCCEEDED.value, "RollingBack"):
        return f"{name} is {phase}: there is no rollout in progress to {verb.replace('-', ' --')}"
    if verb == "promote-full":
        if phase in ("Pending", "Invalid"):
            return f"{name} is {phase}: no rollout has started yet, so there is nothing to promote"
        failing = [str(c.get("name")) for c in status.get("checks") or [] if c.get("verdict") == "fail"]
        if failing:
            return (
                f"{name} has failing checks ({', '.join(failing)}): promote --full never overrides a "
                "failed check; abort it, or fix the candidate and `rollout retry`"
            )
    return None
