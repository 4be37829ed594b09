"""Notifiers: the log, webhooks (Slack-compatible or generic JSON), and a background
dispatcher so that no announcement can ever delay the loop (least of all a rollback)."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import httpx

from mesh_canary.core.model import Webhook
from mesh_canary.protocols import Announcement, Notifier

log = logging.getLogger("mesh_canary.notify")

# Reads one key of a Secret: (name, key) -> value, or None when it is not there.
SecretReader = Callable[[str, str], str | None]


def redact(url: str) -> str:
    """Webhook URLs carry their credentials (Slack's do): log only scheme and host."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}/..."


class LogNotifier:
    def notify(self, announcement: Announcement) -> None:
        level = logging.WARNING if announcement.severity == "warning" else logging.INFO
        log.log(
            level, announcement.message, extra={"rollout": announcement.rollout, "event": announcement.kind}
        )


class WebhookNotifier:
    """POSTs each announcement; `format: slack` sends `{"text": ...}`, `json` the whole record."""

    def __init__(
        self,
        url: str,
        fmt: str = "json",
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.url = url
        self.format = fmt
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    @classmethod
    def from_policy(cls, hook: Webhook, read_secret: SecretReader | None = None) -> WebhookNotifier | None:
        """The hook's URL from the policy, an environment variable or a Secret; None (logged) when unset."""
        url, where = hook.url, "url"
        if not url and hook.url_from_env:
            url, where = os.environ.get(hook.url_from_env), f"environment variable {hook.url_from_env}"
        elif not url and hook.url_from_secret:
            ref = hook.url_from_secret
            where = f"Secret {ref['name']} key {ref['key']}"
            if read_secret is None:
                log.warning(
                    "webhook URL is in %s, which only the in-cluster controller can read; skipped", where
                )
                return None
            try:
                url = read_secret(ref["name"], ref["key"])
            except Exception as e:
                log.warning("cannot read the webhook URL from %s: %s; skipped", where, e)
                return None
        if not url:
            log.warning("%s is not set; webhook skipped", where if where != "url" else "the webhook URL")
            return None
        return cls(url.strip(), hook.format)

    def payload(self, a: Announcement) -> dict[str, Any]:
        if self.format == "slack":
            icon = ":rotating_light:" if a.severity == "warning" else ":white_check_mark:"
            return {"text": f"{icon} *{a.rollout}* {a.kind}: {a.message}"}
        return {k: v for k, v in asdict(a).items() if v is not None}

    def notify(self, announcement: Announcement) -> None:
        try:
            self._client.post(self.url, json=self.payload(announcement)).raise_for_status()
        except httpx.HTTPError as e:
            log.warning("webhook %s failed: %s", redact(self.url), _describe(e))


def _describe(e: httpx.HTTPError) -> str:
    """What went wrong, without the URL (it may hold a token)."""
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    if isinstance(e, httpx.HTTPStatusError):
        return f"answered HTTP {e.response.status_code}"
    return f"{type(e).__name__}: {e}"


class FanOutNotifier:
    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def notify(self, announcement: Announcement) -> None:
        for n in self.notifiers:
            try:
                n.notify(announcement)
            except Exception:  # one broken notifier must not silence the others
                log.exception("notifier %r failed", n)


class BackgroundNotifier:
    """Queues announcements for a worker thread: `notify` returns at once."""

    def __init__(self, inner: Notifier, max_queue: int = 1000) -> None:
        self.inner = inner
        self._queue: queue.Queue[Announcement | None] = queue.Queue(max_queue)
        self._thread = threading.Thread(target=self._work, name="notifier", daemon=True)
        self._thread.start()

    def notify(self, announcement: Announcement) -> None:
        try:
            self._queue.put_nowait(announcement)
        except queue.Full:
            log.warning("notification queue full; dropped %s", announcement.kind)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.inner.notify(item)
            except Exception:
                log.exception("notification failed")

    def close(self, timeout_s: float = 5.0) -> None:
        """Delivers what is queued (up to `timeout_s`), then stops the worker."""
        self._queue.put(None)
        self._thread.join(timeout_s)


def notifier_for_policy(
    webhooks: Sequence[Webhook], extra: Sequence[Notifier] = (), read_secret: SecretReader | None = None
) -> BackgroundNotifier:
    targets: list[Notifier] = [LogNotifier(), *extra]
    for hook in webhooks:
        n = WebhookNotifier.from_policy(hook, read_secret)
        if n is not None:
            targets.append(n)
    return BackgroundNotifier(FanOutNotifier(targets))
