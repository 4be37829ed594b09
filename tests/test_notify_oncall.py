"""On-call notifications against a real HTTP server on 127.0.0.1: PagerDuty Events API v2 and
Microsoft Teams payloads validated against the services' documented schemas, per-event
routing, and a slow or failing receiver that never delays a rollback and never silently
loses what comes after it (retries under a total deadline, bounded queues, counted drops).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mesh_canary.core.engine import Phase
from mesh_canary.core.events import EVENTS
from mesh_canary.core.policy import load_policy
from mesh_canary.core.policy.schema import NOTIFICATION_KINDS
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.notify import NOTIFIERS, Dispatcher, PagerDutyNotifier, TeamsNotifier, notifier_for_policy
from mesh_canary.notify.dispatch import route
from mesh_canary.protocols import Announcement
from mesh_canary.redact import redact
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from tests.conftest import minimal_rollout
from tests.http_receiver import Receiver, serve
from tests.test_engine import ScriptedJudge, make_policy
from tests.test_notifiers import PROMOTED, ROLLED_BACK
from tests.test_runner import FakeMetrics, FakeRouter, Journal
from tests.waiting import wait_for

SCHEMAS = Path(__file__).parent / "data" / "schemas"
ROUTING_KEY = "R0UT1NGKEY0123456789abcdef012345"  # 32 characters, as PagerDuty's are
assert len(ROUTING_KEY) == 32

STEP = Announcement("fraud-scorer", "StepAdvanced", "step 2: 25% of traffic on 1.5.0")


def validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # type: ignore[no-any-return]


PAGERDUTY = validator("pagerduty-events-v2.json")
TEAMS_MESSAGE = validator("teams-workflow-message.json")
ADAPTIVE_CARD = validator("adaptive-card-1.5.json")


def problems(v: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(doc)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def policy_with(notifications: list[dict[str, Any]]) -> Any:
    doc = minimal_rollout()
    doc["spec"]["notifications"] = notifications
    return load_policy(doc)


def pagerduty_target(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "pagerduty": {"routingKeyFrom": {"env": "PD_ROUTING_KEY"}, "url": f"{receiver.url}/v2/enqueue"},
        **extra,
    }


@pytest.fixture
def routing_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PD_ROUTING_KEY", ROUTING_KEY)
    return ROUTING_KEY


# --------------------------------------------------------------------------- PagerDuty


def test_the_pagerduty_schema_refuses_what_pagerduty_refuses() -> None:
    """The schema the payloads are checked against is not a rubber stamp."""
    trigger = {
        "routing_key": ROUTING_KEY,
        "event_action": "trigger",
        "payload": {"summary": "s", "source": "x", "severity": "critical"},
    }
    assert problems(PAGERDUTY, trigger) == []
    assert problems(PAGERDUTY, {**trigger, "payload": {"summary": "s", "source": "x", "severity": "fatal"}})
    assert problems(PAGERDUTY, {k: v for k, v in trigger.items() if k != "payload"})  # a trigger needs one
    assert problems(PAGERDUTY, {"routing_key": ROUTING_KEY, "event_action": "resolve"})  # needs dedup_key
    assert problems(PAGERDUTY, {**trigger, "dedup_key": "k" * 256})
    assert problems(PAGERDUTY, {**trigger, "payload": {**trigger["payload"], "summary": "s" * 1025}})
    assert problems(PAGERDUTY, {**trigger, "payload": {**trigger["payload"], "timestamp": "yesterday"}})


def test_a_rollback_triggers_and_a_promotion_resolves_with_one_dedup_key(
    receiver: Receiver, routing_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.set_mode("accepted")  # PagerDuty answers 202
    policy = policy_with([pagerduty_target(receiver)])
    with caplog.at_level(logging.DEBUG, logger="mesh_canary"):
        notifier = notifier_for_policy(policy.notifications, namespace="models")
        try:
            for a in (STEP, ROLLED_BACK, PROMOTED):  # StepAdvanced is not a PagerDuty event by default
                notifier.notify(a)
        finally:
            notifier.close(timeout_s=30)
    trigger, resolve = receiver.wait_for(2)
    assert len(receiver.posts) == 2
    for post in (trigger, resolve):
        assert post.path == "/v2/enqueue" and post.content_type == "application/json"
        assert problems(PAGERDUTY, post.body) == []
    assert trigger.body["event_action"] == "trigger" and resolve.body["event_action"] == "resolve"
    assert trigger.body["dedup_key"] == resolve.body["dedup_key"] == "mesh-canary/models/fraud-scorer"
    assert trigger.body["routing_key"] == ROUTING_KEY
    details = trigger.body["payload"]
    assert details["severity"] == "critical" and details["class"] == "RolledBack"
    assert details["summary"] == f"models/fraud-scorer RolledBack: {ROLLED_BACK.message}"
    assert details["custom_details"]["weights"] == {"stable": 100, "candidate": 0}
    # The key went to PagerDuty and nowhere else: never in a log, and masked wherever it shows.
    assert ROUTING_KEY not in caplog.text
    assert redact(f"key={ROUTING_KEY}") == "key=***"
    assert notifier.stats()["pagerduty http://127.0.0.1/..."] == {"sent": 2, "failed": 0, "dropped": 0}


def test_the_dedup_key_survives_a_restart_and_names_the_rollout_not_the_run(receiver: Receiver) -> None:
    receiver.set_mode("accepted")
    before = PagerDutyNotifier(ROUTING_KEY, "models", f"{receiver.url}/v2/enqueue")
    after = PagerDutyNotifier(ROUTING_KEY, "models", f"{receiver.url}/v2/enqueue")  # a new process
    assert before.payload(ROLLED_BACK) is not None
    b, a = before.payload(ROLLED_BACK), after.payload(PROMOTED)
    assert b is not None and a is not None and b["dedup_key"] == a["dedup_key"]
    other = PagerDutyNotifier(ROUTING_KEY, "other-team", f"{receiver.url}/v2/enqueue").payload(ROLLED_BACK)
    assert other is not None and other["dedup_key"] != b["dedup_key"]


def test_pagerduty_pages_on_warnings_routed_to_it_and_ignores_information(receiver: Receiver) -> None:
    receiver.set_mode("accepted")
    pd = PagerDutyNotifier(ROUTING_KEY, "models", f"{receiver.url}/v2/enqueue")
    drift = Announcement("fraud-scorer", "ExternalChange", "weights changed outside", severity="warning")
    assert pd.payload(STEP) is None
    payload = pd.payload(drift)
    assert payload is not None and payload["event_action"] == "trigger" and problems(PAGERDUTY, payload) == []
    ack = pd.payload(Announcement("fraud-scorer", "Acknowledged", "acknowledged by a person"))
    assert ack == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "mesh-canary/models/fraud-scorer",
    }


def test_a_routing_key_that_is_not_set_skips_pagerduty_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PD_ROUTING_KEY", raising=False)
    policy = policy_with([{"pagerduty": {"routingKeyFrom": {"env": "PD_ROUTING_KEY"}}}])
    with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
        notifier = notifier_for_policy(policy.notifications)
    notifier.close()
    assert [r.label for r in notifier.routes] == ["log"]
    assert "environment variable PD_ROUTING_KEY is not set" in caplog.text


# --------------------------------------------------------------------------- Teams


def test_teams_gets_a_valid_adaptive_card_per_event(receiver: Receiver) -> None:
    receiver.set_mode("accepted")  # Teams workflows answer 202
    policy = policy_with([{"teams": {"url": f"{receiver.url}/workflows/abc"}}])
    notifier = notifier_for_policy(policy.notifications)
    try:
        notifier.notify(ROLLED_BACK)
        notifier.notify(PROMOTED)
    finally:
        notifier.close(timeout_s=30)
    for post in receiver.wait_for(2):
        assert post.path == "/workflows/abc" and problems(TEAMS_MESSAGE, post.body) == []
        (attachment,) = post.body["attachments"]
        assert problems(ADAPTIVE_CARD, attachment["content"]) == []
    card = receiver.posts[0].body["attachments"][0]["content"]
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "fraud-scorer: RolledBack",
        "weight": "Bolder",
        "size": "Medium",
        "color": "Attention",
        "wrap": True,
    }
    assert {"title": "Weights", "value": "stable 100% / candidate 0%"} in card["body"][2]["facts"]


def test_the_adaptive_card_schema_refuses_a_broken_card() -> None:
    body = TeamsNotifier("http://127.0.0.1:9/x").payload(ROLLED_BACK)
    card = body["attachments"][0]["content"]
    assert problems(ADAPTIVE_CARD, card) == []
    assert problems(ADAPTIVE_CARD, {**card, "body": [{"type": "TextBlock", "txt": "no text"}]})
    assert problems(ADAPTIVE_CARD, {**card, "body": [{"type": "TextBlock", "text": "x", "color": "Red"}]})


# --------------------------------------------------------------------------- routing


def test_each_target_gets_only_the_events_it_asked_for(receiver: Receiver, routing_key: str) -> None:
    receiver.set_mode("accepted")
    policy = policy_with(
        [
            {"webhook": {"url": f"{receiver.url}/all"}},
            {"webhook": {"url": f"{receiver.url}/rollbacks", "format": "slack"}, "events": ["RolledBack"]},
            {"teams": {"url": f"{receiver.url}/teams"}, "events": ["Promoted", "StepAdvanced"]},
            pagerduty_target(receiver),
        ]
    )
    notifier = notifier_for_policy(policy.notifications)
    try:
        for a in (STEP, ROLLED_BACK, PROMOTED):
            notifier.notify(a)
    finally:
        notifier.close(timeout_s=30)
    posts = receiver.wait_for(3 + 1 + 2 + 2)

    def kinds(path: str) -> list[str]:
        out = []
        for p in posts:
            if p.path != path:
                continue
            if "kind" in p.body:
                out.append(p.body["kind"])
            elif "text" in p.body:
                out.append(p.body["text"].split()[2].rstrip(":"))
            elif "attachments" in p.body:
                out.append(p.body["attachments"][0]["content"]["body"][0]["text"].split(": ")[1])
            else:
                out.append(p.body["event_action"])
        return out

    assert kinds("/all") == ["StepAdvanced", "RolledBack", "Promoted"]
    assert kinds("/rollbacks") == ["RolledBack"]
    assert kinds("/teams") == ["StepAdvanced", "Promoted"]
    assert kinds("/v2/enqueue") == ["trigger", "resolve"]


def test_every_event_the_code_announces_is_a_known_event_name() -> None:
    package = Path(__file__).parent.parent / "mesh_canary"
    announced: set[str] = set()
    patterns = (
        r'Announce\(\s*"(\w+)"',
        r'\.announce\(\s*"(\w+)"',
        r'Announcement\(\s*[\w.]+,\s*"(\w+)"',
        r'kind="(\w+)"',
    )
    for path in package.rglob("*.py"):
        text = path.read_text()
        for pattern in patterns:
            announced |= set(re.findall(pattern, text))
    assert {"RolledBack", "Promoted", "ExternalChange", "ReconcileError", "Deleted"} <= announced
    assert announced - set(EVENTS) == set()


def test_the_policy_schema_and_the_registry_name_the_same_receiver_kinds() -> None:
    assert set(NOTIFICATION_KINDS) == set(NOTIFIERS)


def test_an_unknown_event_name_is_bad_input_naming_the_field() -> None:
    from mesh_canary.core.policy import PolicyError

    with pytest.raises(PolicyError) as e:
        policy_with([{"webhook": {"url": "http://127.0.0.1:9/x"}, "events": ["RolledBak"]}])
    assert "spec.notifications[0].events[0]" in str(e.value) and "RolledBack" in str(e.value)


# --------------------------------------------------------------------------- never in the way


def journal_runner(journal: Journal, notifier: Dispatcher) -> RolloutRunner:
    policy = make_policy()
    return RolloutRunner(
        policy,
        FakeRouter(journal),
        FakeMetrics(errors_at=90.0),
        None,
        notifier,
        VirtualClock(),
        judge=ScriptedJudge(),
    )


@pytest.mark.fault(item=1)
def test_a_hanging_pagerduty_never_delays_the_rollback_and_gets_what_comes_after(
    receiver: Receiver, routing_key: str
) -> None:
    journal = Journal()
    receiver.journal = journal.entries
    receiver.set_mode("hang")
    policy = policy_with([pagerduty_target(receiver, timeout="60s")])
    notifier = notifier_for_policy(policy.notifications, namespace="models")
    try:
        runner = journal_runner(journal, notifier)
        result = runner.run()  # steps, then the rollback: its page hangs at the receiver
        assert result.outcome == "rolled_back" and receiver.answered == 0
        # The rollout ended (its rollback written) while the page about it is unanswered.
        assert [p.body["payload"]["class"] for p in receiver.wait_for(1)] == ["RolledBack"]
        assert not receiver.release.is_set()
        writes = [
            i for i, (what, value) in enumerate(journal.entries) if what == "weights" and value == ALL_STABLE
        ]
        assert writes, journal.entries
        receiver.set_mode("accepted")  # it recovers: everything queued behind the hang arrives
        notifier.notify(PROMOTED)  # and so does what comes later
        posts = receiver.wait_for(2)
    finally:
        notifier.close(timeout_s=30)
    assert [p.body["event_action"] for p in posts] == ["trigger", "resolve"]
    # Order, not durations: the rollback write came before the page about it reached the receiver.
    page = next(
        i
        for i, (what, body) in enumerate(journal.entries)
        if what == "post" and body.get("payload", {}).get("class") == "RolledBack"
    )
    assert writes[-1] < page
    assert runner.state is not None and runner.state.phase is Phase.ROLLED_BACK


@pytest.mark.fault(item=1)
def test_a_failing_receiver_is_retried_until_its_deadline_then_counted_and_the_next_arrives(
    receiver: Receiver, routing_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[tuple[str, str]] = []
    receiver.set_mode("fail")  # HTTP 500: PagerDuty says retry
    policy = policy_with([pagerduty_target(receiver, timeout="2s")])
    with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
        notifier = notifier_for_policy(
            policy.notifications, namespace="models", on_outcome=lambda *o: outcomes.append(o)
        )
        try:
            notifier.notify(ROLLED_BACK)
            # A 2 s deadline gives up within 30 s (bounded, not forever); attempts were retried.
            wait_for("the page to fail", lambda: ("pagerduty", "failed") in outcomes, timeout_s=30)
            attempts = len(receiver.posts)
            assert attempts >= 2
            receiver.set_mode("accepted")
            notifier.notify(PROMOTED)
            wait_for("the resolve to arrive", lambda: ("pagerduty", "sent") in outcomes, timeout_s=30)
        finally:
            notifier.close(timeout_s=30)
    assert receiver.posts[-1].body["event_action"] == "resolve"
    assert outcomes == [("pagerduty", "failed"), ("pagerduty", "sent")]
    assert notifier.stats()["pagerduty http://127.0.0.1/..."] == {"sent": 1, "failed": 1, "dropped": 0}
    warning = next(r.getMessage() for r in caplog.records if "not delivered" in r.getMessage())
    assert "answered HTTP 500" in warning and f"after {attempts} attempts" in warning
    assert ROUTING_KEY not in caplog.text


def test_a_refused_payload_is_not_retried(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    """HTTP 400 (PagerDuty: the event is invalid) will not change with another attempt."""

    class Refused(PagerDutyNotifier):
        def accepted(self, status: int) -> bool:
            return False if status == 200 else super().accepted(status)

    pd = Refused(ROUTING_KEY, "models", f"{receiver.url}/ok", timeout_s=30)
    from mesh_canary.notify import DeliveryError

    with pytest.raises(DeliveryError) as e:
        pd.deliver(ROLLED_BACK, deadline=__import__("time").monotonic() + 30)
    assert e.value.retryable is False and e.value.reason == "answered HTTP 200"


@pytest.mark.fault(item=1)
def test_a_full_queue_drops_and_counts_and_says_so(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[tuple[str, str]] = []
    receiver.set_mode("hang")
    target = PagerDutyNotifier(ROUTING_KEY, "models", f"{receiver.url}/v2/enqueue", timeout_s=60)
    r = route(target, None, on_outcome=lambda *o: outcomes.append(o), max_queue=2)
    notifier = Dispatcher([r])
    try:
        notifier.notify(ROLLED_BACK)
        receiver.wait_for(1)  # the worker holds the first one; the queue is empty
        with caplog.at_level(logging.WARNING, logger="mesh_canary.notify"):
            for i in range(5):
                notifier.notify(Announcement("fraud-scorer", "RollbackFailing", f"attempt {i}", "warning"))
        assert notifier.dropped == 3 and outcomes == [("pagerduty", "dropped")] * 3
        assert "dropped RollbackFailing: attempt 2 (3 dropped so far)" in caplog.text
        receiver.set_mode("accepted")
        posts = receiver.wait_for(3)
    finally:
        notifier.close(timeout_s=30)
    # The oldest made room: the latest news arrives once the receiver recovers.
    assert [p.body["payload"]["custom_details"]["message"] for p in posts[1:]] == ["attempt 3", "attempt 4"]
    assert notifier.stats()[r.label] == {"sent": 3, "failed": 0, "dropped": 3}


def test_the_controller_counts_notifications_by_receiver_and_outcome() -> None:
    from prometheus_client import generate_latest

    from mesh_canary.controller.metrics import ControllerMetrics

    m = ControllerMetrics()
    m.notification("pagerduty", "dropped")
    m.notification("pagerduty", "dropped")
    m.notification("teams", "sent")
    text = generate_latest(m.registry).decode()
    assert 'mesh_canary_notifications_total{outcome="dropped",receiver="pagerduty"} 2.0' in text
    assert 'mesh_canary_notifications_total{outcome="sent",receiver="teams"} 1.0' in text


def test_close_is_bounded_even_behind_a_hanging_receiver(receiver: Receiver) -> None:
    receiver.set_mode("hang")
    policy = policy_with([{"webhook": {"url": f"{receiver.url}/x"}, "timeout": "60s"}])
    notifier = notifier_for_policy(policy.notifications)
    notifier.notify(ROLLED_BACK)
    receiver.wait_for(1)
    done = threading.Event()
    threading.Thread(target=lambda: (notifier.close(timeout_s=1.0), done.set()), daemon=True).start()
    assert done.wait(30), "close() waited for a hanging receiver"


# --------------------------------------------------------------------------- rollout ack


def test_rollout_ack_with_a_policy_file_resolves_the_page_of_a_standalone_run(
    receiver: Receiver, routing_key: str, tmp_path: Path
) -> None:
    import yaml
    from click.testing import CliRunner

    from mesh_canary.cli import main

    receiver.set_mode("accepted")
    doc = minimal_rollout()
    doc["metadata"]["namespace"] = "models"
    doc["spec"]["notifications"] = [pagerduty_target(receiver)]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(main, ["rollout", "ack", "fraud-scorer", "-f", str(path)])
    assert result.exit_code == 0, result.output
    assert "models/fraud-scorer: pagerduty http://127.0.0.1/...: sent" in result.output
    (post,) = receiver.wait_for(1)
    assert problems(PAGERDUTY, post.body) == []
    assert post.body == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": "mesh-canary/models/fraud-scorer",
    }
    # Another rollout's policy: one sentence, exit 2, nothing sent.
    wrong = CliRunner().invoke(main, ["rollout", "ack", "other-model", "-f", str(path)])
    assert wrong.exit_code == 2 and "is the policy of 'fraud-scorer', not 'other-model'" in wrong.output
    # A receiver that cannot be reached: exit 1, saying which.
    receiver.set_mode("fail")
    doc["spec"]["notifications"] = [pagerduty_target(receiver, timeout="1s")]
    path.write_text(yaml.safe_dump(doc))
    failed = CliRunner().invoke(main, ["rollout", "ack", "fraud-scorer", "-f", str(path)])
    assert failed.exit_code == 1 and "pagerduty http://127.0.0.1/...: failed" in failed.output
    assert ROUTING_KEY not in failed.output


def test_close_waits_by_default_for_a_page_being_retried(receiver: Receiver, routing_key: str) -> None:
    """`run` closes its notifier right before it exits: a rollback's page that is still being
    retried gets the receiver's deadline to go through, not a fixed few seconds."""
    receiver.set_mode("fail")
    policy = policy_with([pagerduty_target(receiver, timeout="20s")])
    notifier = notifier_for_policy(policy.notifications)
    notifier.notify(ROLLED_BACK)
    receiver.wait_for(2)  # a first attempt failed and was retried
    threading.Timer(6.0, receiver.set_mode, args=("accepted",)).start()  # it recovers, later than 5 s
    notifier.close()
    assert notifier.stats()["pagerduty http://127.0.0.1/..."]["sent"] == 1
