"""Webhook notifications against a real HTTP server on 127.0.0.1 (stdlib http.server, a thread).

What a receiver gets in each format, the URL read from the environment, and that a webhook
that hangs or fails never delays or breaks the rollout loop (it is only logged).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mesh_canary.core.model import Webhook
from mesh_canary.core.policy import load_policy
from mesh_canary.notify import (
    BackgroundNotifier,
    FanOutNotifier,
    WebhookNotifier,
    notifier_for_policy,
)
from mesh_canary.protocols import Announcement
from tests.conftest import minimal_rollout
from tests.http_receiver import Receiver, serve
from tests.waiting import wait_for

ROLLED_BACK = Announcement(
    rollout="fraud-scorer",
    kind="RolledBack",
    message="rolled back to 100% stable: errorRate: error rate 2.19% exceeds the tolerated 1.5x",
    severity="warning",
    details={"phase": "RolledBack", "weights": {"stable": 100, "candidate": 0}},
)
PROMOTED = Announcement(rollout="fraud-scorer", kind="Promoted", message="promoted 1.5.0: 100% of traffic")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"  # nothing listens once closed


# --------------------------------------------------------------------------- formats


def test_slack_format_posts_one_text_line_with_an_icon_by_severity(receiver: Receiver) -> None:
    hook = WebhookNotifier(f"{receiver.url}/ok", "slack")
    hook.notify(ROLLED_BACK)
    hook.notify(PROMOTED)
    first, second = receiver.wait_for(2)
    assert first.path == "/ok" and first.content_type == "application/json"
    assert first.body == {"text": f":rotating_light: *fraud-scorer* RolledBack: {ROLLED_BACK.message}"}
    assert second.body == {
        "text": ":white_check_mark: *fraud-scorer* Promoted: promoted 1.5.0: 100% of traffic"
    }


def test_json_format_posts_the_whole_announcement(receiver: Receiver) -> None:
    hook = WebhookNotifier(f"{receiver.url}/ok", "json")
    hook.notify(ROLLED_BACK)
    hook.notify(PROMOTED)
    first, second = receiver.wait_for(2)
    assert first.content_type == "application/json"
    assert first.body == {
        "rollout": "fraud-scorer",
        "kind": "RolledBack",
        "message": ROLLED_BACK.message,
        "severity": "warning",
        "details": {"phase": "RolledBack", "weights": {"stable": 100, "candidate": 0}},
    }
    # No details: the key is left out rather than sent as null.
    assert second.body == {
        "rollout": "fraud-scorer",
        "kind": "Promoted",
        "message": "promoted 1.5.0: 100% of traffic",
        "severity": "info",
    }


# --------------------------------------------------------------------------- urlFrom.env


def test_url_from_env_is_read_when_the_notifier_is_made(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MESH_CANARY_TEST_HOOK", f"{receiver.url}/ok")
    hook = WebhookNotifier.from_policy(Webhook(url_from_env="MESH_CANARY_TEST_HOOK", format="slack"))
    assert hook is not None and hook.url == f"{receiver.url}/ok" and hook.format == "slack"
    hook.notify(PROMOTED)
    assert receiver.wait_for(1)[0].body["text"].endswith("Promoted: promoted 1.5.0: 100% of traffic")

    # Unset: no notifier, and a warning naming the variable (never a crash at start-up).
    monkeypatch.delenv("MESH_CANARY_TEST_HOOK")
    with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
        assert WebhookNotifier.from_policy(Webhook(url_from_env="MESH_CANARY_TEST_HOOK")) is None
    assert "MESH_CANARY_TEST_HOOK is not set" in caplog.text


def test_a_policys_webhooks_with_url_from_env_receive_every_announcement(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_HOOK", f"{receiver.url}/ok")
    doc = minimal_rollout()
    doc["spec"]["notifications"] = [
        {"webhook": {"urlFrom": {"env": "ROLLOUT_HOOK"}, "format": "slack"}},
        {"webhook": {"url": f"{receiver.url}/ok", "format": "json"}},
    ]
    policy = load_policy(doc)
    notifier = notifier_for_policy(policy.notifications)
    try:
        notifier.notify(ROLLED_BACK)
    finally:
        notifier.close(timeout_s=10)
    posts = receiver.wait_for(2)
    assert sorted(("text" in p.body, "kind" in p.body) for p in posts) == [(False, True), (True, False)]


# --------------------------------------------------------------------------- never in the way


def test_a_hanging_webhook_does_not_delay_notify(receiver: Receiver) -> None:
    notifier = BackgroundNotifier(WebhookNotifier(f"{receiver.url}/hang", "json", timeout_s=10))
    try:
        started = time.monotonic()
        for kind in ("StepAdvanced", "RolledBack", "Promoted"):
            notifier.notify(Announcement("fraud-scorer", kind, f"{kind} happened"))
        took = time.monotonic() - started
        receiver.wait_for(1)  # the first post is in, and the server holds it
        assert took < 0.1, f"notify blocked for {took:.3f}s behind a hanging webhook"
        assert len(receiver.posts) == 1
        receiver.release.set()
    finally:
        notifier.close(timeout_s=10)
    # Once the receiver answers, everything queued is delivered, in order.
    assert [p.body["kind"] for p in receiver.wait_for(3)] == ["StepAdvanced", "RolledBack", "Promoted"]


def test_a_webhook_that_hangs_past_its_timeout_is_logged_and_given_up(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    hook = WebhookNotifier(f"{receiver.url}/hang", "json", timeout_s=0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
        hook.notify(PROMOTED)  # does not raise
    assert time.monotonic() - started < 3.0
    assert "webhook" in caplog.text and "failed" in caplog.text and "timed out" in caplog.text.lower()


def test_a_failing_webhook_is_logged_not_raised_and_the_others_still_get_theirs(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    failing = WebhookNotifier(f"{receiver.url}/fail", "json")
    unreachable = WebhookNotifier(closed_port_url(), "json", timeout_s=2)
    working = WebhookNotifier(f"{receiver.url}/ok", "slack")
    with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
        failing.notify(ROLLED_BACK)  # HTTP 500: no exception
        unreachable.notify(ROLLED_BACK)  # connection refused: no exception
        notifier = BackgroundNotifier(FanOutNotifier([failing, unreachable, working]))
        try:
            notifier.notify(PROMOTED)
        finally:
            notifier.close(timeout_s=10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("500" in w for w in warnings) == 2, warnings
    assert sum("webhook" in w and "failed" in w for w in warnings) == 4, warnings
    # The working hook still got the announcement after the two broken ones.
    posts = receiver.wait_for(3)
    assert [p.path for p in posts] == ["/fail", "/fail", "/ok"]
    assert posts[-1].body["text"].endswith("Promoted: promoted 1.5.0: 100% of traffic")


def test_a_webhook_url_from_a_secret_is_read_through_the_reader(caplog: pytest.LogCaptureFixture) -> None:
    from mesh_canary.core.model import Webhook
    from mesh_canary.notify import WebhookNotifier

    hook = Webhook(url_from_secret={"name": "slack", "key": "url"}, format="slack")
    asked: list[tuple[str, str]] = []

    def reader(name: str, key: str) -> str | None:
        asked.append((name, key))
        return "https://hooks.example.com/services/T0/B0/SECRETTOKEN\n"

    n = WebhookNotifier.from_policy(hook, reader)
    assert n is not None and n.url == "https://hooks.example.com/services/T0/B0/SECRETTOKEN"
    assert asked == [("slack", "url")]
    with caplog.at_level("WARNING"):
        assert WebhookNotifier.from_policy(hook) is None  # the CLI cannot read Secrets
    assert "Secret slack key url" in caplog.text


def test_failure_logs_never_carry_the_webhook_token(caplog: pytest.LogCaptureFixture) -> None:
    from mesh_canary.notify import WebhookNotifier

    n = WebhookNotifier(closed_port_url().replace("/hook", "/services/SECRETTOKEN"), timeout_s=1.0)
    with caplog.at_level("WARNING"):
        n.notify(ROLLED_BACK)
    assert "failed" in caplog.text and "SECRETTOKEN" not in caplog.text


def test_a_receiver_holds_a_thread_only_while_it_has_announcements() -> None:
    """No worker thread while idle (a thousand quiet rollouts hold no notifier threads); one
    while announcements wait, in order; none after; closing delivers what is queued."""
    delivered: list[str] = []
    gate = threading.Event()

    class Slow:
        def notify(self, a: Announcement) -> None:
            gate.wait(10)
            delivered.append(a.kind)

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "notify-idle-test"]

    notifier = BackgroundNotifier(Slow(), 10, name="idle-test")
    assert workers() == []
    for kind in ("Started", "Progressed", "Promoted"):
        notifier.notify(Announcement(rollout="r", kind=kind, message=kind))
    assert len(workers()) == 1  # one worker for all three, in order
    gate.set()
    wait_for("all delivered", lambda: delivered == ["Started", "Progressed", "Promoted"])
    wait_for("the worker ended", lambda: workers() == [])
    gate.clear()
    notifier.notify(Announcement(rollout="r", kind="RolledBack", message="back"))
    assert len(workers()) == 1  # the next announcement starts one again
    gate.set()
    notifier.close(timeout_s=10)
    assert delivered[-1] == "RolledBack" and workers() == []
    idle = BackgroundNotifier(Slow(), 10, name="idle-test")
    idle.close(timeout_s=10)  # never announced: nothing to wait for
    assert workers() == []
