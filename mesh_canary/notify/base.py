"""What every notifier shares: one JSON POST that ends by a deadline whatever the receiver
does, the receiver's answer sorted into delivered / worth another attempt / not, and reading
a URL or key from the policy, the environment or a Secret without ever logging it."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from mesh_canary.errors import Unreachable
from mesh_canary.metrics.deadline_http import DeadlineClient, DeadlineExceeded
from mesh_canary.protocols import Announcement
from mesh_canary.redact import register_secret

log = logging.getLogger("mesh_canary.notify")

# Reads one key of a Secret: (name, key) -> value, or None when it is not there.
SecretReader = Callable[[str, str], str | None]


class DeliveryError(Exception):
    """One attempt failed. ``reason`` is safe to log (never the URL, a key or a body);
    ``retryable``: worth another attempt (timeouts, network errors, HTTP 429 and 5xx, as
    PagerDuty's and Teams' documentation say), or not (any other 4xx: the payload is refused)."""

    def __init__(self, reason: str, retryable: bool = True) -> None:
        super().__init__(reason)
        self.reason, self.retryable = reason, retryable


def host_only(url: str) -> str:
    """Webhook URLs carry their credentials (Slack's, Teams' do): show only scheme and host."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}/..."


def lookup(
    what: str,
    value: str | None,
    env: str | None,
    secret: Mapping[str, str] | None,
    read_secret: SecretReader | None,
) -> str | None:
    """``value`` as written in the policy, else the environment variable ``env``, else the
    Secret ``secret`` ({name, key}); None (with a warning naming where) when it is not set.
    A value read from the environment or a Secret is registered as a secret (never shown)."""
    if value:
        return value.strip()
    if env:
        found, where = os.environ.get(env), f"environment variable {env}"
    elif secret:
        where = f"Secret {secret['name']} key {secret['key']}"
        if read_secret is None:
            log.warning("%s is in %s, which only the in-cluster controller can read; skipped", what, where)
            return None
        try:
            found = read_secret(secret["name"], secret["key"])
        except Exception as e:
            log.warning("cannot read the %s from %s: %s; skipped", what, where, type(e).__name__)
            return None
    else:
        found, where = None, what
    if not found or not found.strip():
        log.warning("%s is not set; %s skipped", where, what)
        return None
    register_secret(found.strip())
    return found.strip()


class JsonTarget:
    """A receiver that takes one HTTP POST of JSON per announcement.

    Subclasses say what to send (`payload`, None: this event means nothing to the receiver)
    and which events they take by default. `deliver` makes one attempt that ends by a
    deadline (the dispatcher's queue retries, under the receiver's total deadline); `notify`
    makes one attempt and logs a failure (the Notifier protocol: never raises)."""

    kind = "webhook"
    default_events: frozenset[str] | None = None  # None: every event

    def __init__(self, url: str, timeout_s: float = 5.0, client: DeadlineClient | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client = client or DeadlineClient()

    @property
    def label(self) -> str:
        """What logs and metrics call this receiver (no secret in it)."""
        return f"{self.kind} {host_only(self.url)}"

    def payload(self, a: Announcement) -> dict[str, Any] | None:
        raise NotImplementedError

    def accepted(self, status: int) -> bool:
        return 200 <= status < 300

    def deliver(self, a: Announcement, deadline: float) -> bool:
        """Send ``a`` once, answered by ``deadline`` (``time.monotonic()``); False when there
        was nothing to send. Raises DeliveryError."""
        body = self.payload(a)
        if body is None:
            return False
        content = json.dumps(body).encode()
        try:
            answer = self._client.request(
                "POST",
                httpx.URL(self.url),
                deadline,
                headers={"Content-Type": "application/json"},
                content=content,
            )
        except DeadlineExceeded:
            raise DeliveryError("timed out") from None
        except Unreachable as e:
            raise DeliveryError(str(e) or "unreachable") from None
        except Exception as e:  # the receiver does not speak HTTP, or something else broke
            raise DeliveryError(type(e).__name__) from None
        if not self.accepted(answer.status):
            retry = answer.status == 429 or answer.status >= 500
            raise DeliveryError(f"answered HTTP {answer.status}", retryable=retry)
        return True

    def notify(self, announcement: Announcement) -> None:
        try:
            self.deliver(announcement, time.monotonic() + self.timeout_s)
        except DeliveryError as e:
            log.warning("%s failed: %s", self.label, e.reason)
