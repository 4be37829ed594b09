"""Notifiers: the log, webhooks (Slack-compatible or generic JSON), PagerDuty and Microsoft
Teams, each receiver behind its own queue so that no announcement can ever delay the loop
(least of all a rollback).

Adding a kind of receiver is one module (a `JsonTarget` with its `payload`) plus one line in
`NOTIFIERS`; the policy schema lists the kinds (tests/test_notify_routing.py checks both agree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mesh_canary.core.model import Webhook
from mesh_canary.notify.base import DeliveryError, JsonTarget, SecretReader, host_only
from mesh_canary.notify.dispatch import (
    BackgroundNotifier,
    Dispatcher,
    FanOutNotifier,
    OutcomeHook,
    Retrying,
    plain_route,
    route,
)
from mesh_canary.notify.log import LogNotifier
from mesh_canary.notify.pagerduty import PagerDutyNotifier, dedup_key
from mesh_canary.notify.teams import TeamsNotifier
from mesh_canary.notify.webhook import WebhookNotifier
from mesh_canary.protocols import Announcement, Notifier

# kind -> (the policy's target, the rollout's namespace, a Secret reader) -> receiver, or None (logged).
Factory = Callable[[Webhook, str, SecretReader | None], JsonTarget | None]

NOTIFIERS: dict[str, Factory] = {
    "webhook": lambda t, ns, read: WebhookNotifier.from_policy(t, read),
    "pagerduty": PagerDutyNotifier.from_policy,
    "teams": lambda t, ns, read: TeamsNotifier.from_policy(t, read),
}

redact = host_only  # the former name


def receivers(
    targets: Sequence[Webhook], namespace: str = "default", read_secret: SecretReader | None = None
) -> list[tuple[Webhook, JsonTarget]]:
    """The policy's notification targets that can be reached (unset URLs and keys are logged, skipped)."""
    out: list[tuple[Webhook, JsonTarget]] = []
    for target in targets:
        made = NOTIFIERS[target.kind](target, namespace, read_secret)
        if made is not None:
            out.append((target, made))
    return out


def notifier_for_policy(
    webhooks: Sequence[Webhook],
    extra: Sequence[Notifier] = (),
    read_secret: SecretReader | None = None,
    *,
    namespace: str = "default",
    on_outcome: OutcomeHook | None = None,
) -> Dispatcher:
    """The log, ``extra`` (Kubernetes Events) and every target of the policy, each behind its
    own queue; each target gets the events it asked for (default: its kind's)."""
    routes = [plain_route("log", "log", LogNotifier())]
    routes += [plain_route(f"extra {i}", type(n).__name__, n) for i, n in enumerate(extra)]
    for target, receiver in receivers(webhooks, namespace, read_secret):
        events = target.events if target.events is not None else receiver.default_events
        routes.append(route(receiver, events, on_outcome))
    return Dispatcher(routes)


def acknowledge(
    targets: Sequence[Webhook],
    rollout: str,
    namespace: str,
    message: str,
    read_secret: SecretReader | None = None,
    timeout_s: float = 30.0,
) -> dict[str, str]:
    """A person's `rollout ack`: `Acknowledged` to every target that takes it (PagerDuty
    resolves the rollout's page). {receiver: sent | failed | not sent} once delivered or
    ``timeout_s`` passed; {} when no target takes it."""
    dispatcher = notifier_for_policy(targets, read_secret=read_secret, namespace=namespace)
    dispatcher.routes = [r for r in dispatcher.routes if r.kind != "log" and r.takes("Acknowledged")]
    dispatcher.notify(Announcement(rollout, "Acknowledged", message))
    dispatcher.close(timeout_s)
    out: dict[str, str] = {}
    for label, counts in dispatcher.stats().items():
        out[label] = "sent" if counts["sent"] else "failed" if counts["failed"] else "not sent"
    return out


__all__ = [
    "NOTIFIERS",
    "BackgroundNotifier",
    "DeliveryError",
    "Dispatcher",
    "FanOutNotifier",
    "JsonTarget",
    "LogNotifier",
    "PagerDutyNotifier",
    "Retrying",
    "SecretReader",
    "TeamsNotifier",
    "WebhookNotifier",
    "acknowledge",
    "dedup_key",
    "notifier_for_policy",
    "receivers",
    "redact",
]
