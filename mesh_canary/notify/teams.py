"""Microsoft Teams through a workflow webhook (the "Send webhook alerts to a channel" flow of
the Workflows app, which replaces the retired Office 365 connectors): each announcement as an
Adaptive Card (version 1.4) in a message with one attachment.

Formats: https://learn.microsoft.com/en-us/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using
(the message envelope) and https://adaptivecards.io/explorer/ (the card; the tests validate
it against the official schema, microsoft/AdaptiveCards schemas/1.5.0, MIT).
"""

from __future__ import annotations

from typing import Any

from mesh_canary.core.model import Webhook
from mesh_canary.notify.base import JsonTarget, SecretReader, lookup
from mesh_canary.protocols import Announcement

CARD_VERSION = "1.4"
CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


class TeamsNotifier(JsonTarget):
    kind = "teams"

    @classmethod
    def from_policy(cls, target: Webhook, read_secret: SecretReader | None = None) -> TeamsNotifier | None:
        url = lookup(
            "the Teams workflow URL", target.url, target.url_from_env, target.url_from_secret, read_secret
        )
        return None if url is None else cls(url, target.timeout_s)

    def payload(self, a: Announcement) -> dict[str, Any]:
        return {
            "type": "message",
            "attachments": [{"contentType": CARD_CONTENT_TYPE, "contentUrl": None, "content": card(a)}],
        }


def card(a: Announcement) -> dict[str, Any]:
    """The Adaptive Card for one announcement: a title coloured by severity, the message, and
    the facts (phase, weights) a person needs to decide what to do."""
    details = a.details or {}
    facts = [{"title": "Rollout", "value": a.rollout}, {"title": "Event", "value": a.kind}]
    if "phase" in details:
        facts.append({"title": "Phase", "value": str(details["phase"])})
    weights = details.get("weights")
    if isinstance(weights, dict) and "stable" in weights:
        facts.append(
            {
                "title": "Weights",
                "value": f"stable {weights['stable']}% / candidate {weights.get('candidate', 0)}%",
            }
        )
    warning = a.severity == "warning"
    return {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "fallbackText": f"{a.rollout} {a.kind}: {a.message}",
        "body": [
            {
                "type": "TextBlock",
                "text": f"{a.rollout}: {a.kind}",
                "weight": "Bolder",
                "size": "Medium",
                "color": "Attention" if warning else "Good",
                "wrap": True,
            },
            {"type": "TextBlock", "text": a.message, "wrap": True},
            {"type": "FactSet", "facts": facts},
        ],
    }
