"""A webhook: each announcement as one POST, Slack-compatible (`format: slack`, `{"text": ...}`)
or the whole record as JSON (`format: json`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mesh_canary.core.model import Webhook
from mesh_canary.metrics.deadline_http import DeadlineClient
from mesh_canary.notify.base import JsonTarget, SecretReader, lookup
from mesh_canary.protocols import Announcement


class WebhookNotifier(JsonTarget):
    """POSTs each announcement; `format: slack` sends `{"text": ...}`, `json` the whole record."""

    kind = "webhook"

    def __init__(
        self, url: str, fmt: str = "json", timeout_s: float = 5.0, client: DeadlineClient | None = None
    ) -> None:
        super().__init__(url, timeout_s, client)
        self.format = fmt

    @classmethod
    def from_policy(cls, hook: Webhook, read_secret: SecretReader | None = None) -> WebhookNotifier | None:
        """The hook's URL from the policy, an environment variable or a Secret; None (logged) when unset."""
        url = lookup("the webhook URL", hook.url, hook.url_from_env, hook.url_from_secret, read_secret)
        return None if url is None else cls(url, hook.format, hook.timeout_s)

    def payload(self, a: Announcement) -> dict[str, Any]:
        if self.format == "slack":
            icon = ":rotating_light:" if a.severity == "warning" else ":white_check_mark:"
            return {"text": f"{icon} *{a.rollout}* {a.kind}: {a.message}"}
        return {k: v for k, v in asdict(a).items() if v is not None}
