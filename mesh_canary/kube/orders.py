"""A person's order to a ModelRollout (pause, resume, approve, abort): one annotation that
the controller handles once per value (docs/controller.md). The `rollout` verbs and the
dashboard's buttons both go through here."""

from __future__ import annotations

import time
import uuid

from mesh_canary.kube.status import COMMAND_ANNOTATIONS

# verb -> the order's annotation word (resume is a pause set to false)
VERBS: dict[str, str] = {"abort": "abort", "approve": "approve", "pause": "pause", "resume": "pause"}


def request_id() -> str:
    """A new order's id: its time and a random tail, so that each order is handled once."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def order(verb: str) -> tuple[str, str]:
    """The annotation word and value of a new order ``verb``; KeyError for an unknown verb."""
    word = VERBS[verb]
    rid = request_id()
    value = {"pause": f"true@{rid}", "resume": f"false@{rid}"}.get(verb, rid)
    return word, value


def annotation(word: str) -> str:
    return COMMAND_ANNOTATIONS[word]
