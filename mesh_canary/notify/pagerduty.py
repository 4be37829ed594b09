"""PagerDuty Events API v2: a rollback pages the on-call person; a later promotion of the same
rollout, or a person's `mesh-canary rollout ack`, resolves the page.

The dedup key names the rollout resource (namespace and name), not one run of it: it is the
same after a restart of the controller or of `mesh-canary run --state`, so a retried or
repeated rollback adds to the open alert instead of paging twice, and a later rollout of the
same model (a new candidate under the same name) resolves it. The routing key comes only from
the environment or a Secret and is registered as a secret: no log, status or other payload
shows it.

Format: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (the fields,
limits and answers below are from there: 202 accepted, 400 refused, 429 and 5xx retry).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mesh_canary.core.events import PAGE_EVENTS, RESOLVE_EVENTS
from mesh_canary.core.model import PAGERDUTY_EVENTS_URL, Webhook
from mesh_canary.metrics.deadline_http import DeadlineClient
from mesh_canary.notify.base import JsonTarget, SecretReader, lookup
from mesh_canary.protocols import Announcement

SUMMARY_LIMIT = 1024  # characters, the API's limit on payload.summary
DEDUP_KEY_LIMIT = 255


def dedup_key(namespace: str, rollout: str) -> str:
    """One alert per rollout resource, the same in every process and after every restart."""
    return f"mesh-canary/{namespace}/{rollout}"[:DEDUP_KEY_LIMIT]


class PagerDutyNotifier(JsonTarget):
    """Triggers on a rollback (and on any other warning routed to it), resolves on Promoted
    and Acknowledged; ignores the rest."""

    kind = "pagerduty"
    default_events = PAGE_EVENTS | RESOLVE_EVENTS

    def __init__(
        self,
        routing_key: str,
        namespace: str,
        url: str = PAGERDUTY_EVENTS_URL,
        severity: str = "critical",
        timeout_s: float = 10.0,
        client: DeadlineClient | None = None,
    ) -> None:
        super().__init__(url, timeout_s, client)
        self.routing_key, self.namespace, self.severity = routing_key, namespace, severity

    @classmethod
    def from_policy(
        cls, target: Webhook, namespace: str, read_secret: SecretReader | None = None
    ) -> PagerDutyNotifier | None:
        key = lookup(
            "the PagerDuty routing key", None, target.key_from_env, target.key_from_secret, read_secret
        )
        if key is None:
            return None
        url = target.url or PAGERDUTY_EVENTS_URL
        return cls(key, namespace, url, target.severity, target.timeout_s)

    def action(self, a: Announcement) -> str | None:
        if a.kind in RESOLVE_EVENTS:
            return "resolve"
        if a.kind in PAGE_EVENTS or a.severity == "warning":
            return "trigger"
        return None  # an informational event routed here: nothing to page about

    def payload(self, a: Announcement) -> dict[str, Any] | None:
        action = self.action(a)
        if action is None:
            return None
        event: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": action,
            "dedup_key": dedup_key(self.namespace, a.rollout),
        }
        if action != "trigger":
            return event  # acknowledge and resolve carry only the key (the documented form)
        summary = f"{self.namespace}/{a.rollout} {a.kind}: {a.message}"
        event.update(
            payload={
                "summary": summary[: SUMMARY_LIMIT - 1] + "…" if len(summary) > SUMMARY_LIMIT else summary,
                "source": f"modelrollout/{self.namespace}/{a.rollout}",
                "severity": self.severity,
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "component": a.rollout,
                "group": self.namespace,
                "class": a.kind,
                "custom_details": {"message": a.message, **(a.details or {})},
            },
            client="mesh-canary",
        )
        return event
