"""The registry announcer with a fake registry (unit tier): what it tells, its bounded retries,
a refusal that is not retried, and the condition it records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from mesh_canary.core.model import RegistrySpec
from mesh_canary.protocols import Announcement, ModelVersion
from mesh_canary.redact import redact
from mesh_canary.registry.announce import RegistryAnnouncer, resolve_versions
from mesh_canary.registry.mlflow import RegistryRefused, RegistryUnavailable
from tests.test_engine import make_policy

V2 = ModelVersion("models:/m@challenger", "m", "2")


class FakeRegistry:
    def __init__(self, fail: list[Exception] | None = None) -> None:
        self.fail = list(fail or [])
        self.calls: list[tuple[str, Any]] = []

    def _maybe_fail(self) -> None:
        if self.fail:
            raise self.fail.pop(0)

    def resolve(self, uri: str) -> ModelVersion:
        self.calls.append(("resolve", uri))
        return ModelVersion(uri, "m", "7")

    def set_alias(self, model: ModelVersion, alias: str) -> None:
        self.calls.append(("alias", (model.version, alias)))
        self._maybe_fail()

    def set_tags(self, model: ModelVersion, tags: Mapping[str, str]) -> None:
        self.calls.append(("tags", dict(tags)))
        self._maybe_fail()


def announcer(registry: FakeRegistry, records: list[dict[str, Any]], **kw: Any) -> RegistryAnnouncer:
    policy = replace(make_policy(), registry=RegistrySpec(tracking_uri="http://r", alias="prod"))
    sleeps: list[float] = []
    out = RegistryAnnouncer(
        registry, policy, {"candidate": V2}, records.append, sleep=sleeps.append, clock=lambda: 0.0, **kw
    )
    out.sleeps = sleeps  # type: ignore[attr-defined]
    return out


def test_promotion_moves_the_configured_alias_then_tags() -> None:
    registry, records = FakeRegistry(), []
    a = announcer(registry, records)
    a.notify(Announcement("r", "StepAdvanced", "to 50%"))
    assert registry.calls == [], "only a promotion or a rollback is told"
    a.notify(Announcement("r", "Promoted", "done"))
    assert registry.calls[0] == ("alias", ("2", "prod"))
    assert registry.calls[1][1]["mesh-canary.result"] == "promoted"
    assert registry.calls[1][1]["mesh-canary.time"] == "1970-01-01T00:00:00Z"
    assert records[-1]["status"] == "True" and records[-1]["reason"] == "AliasMoved"


def test_transient_failures_are_retried_with_backoff_and_bounded() -> None:
    registry, records = FakeRegistry([RegistryUnavailable("down")] * 2), []
    a = announcer(registry, records)
    a.notify(Announcement("r", "RolledBack", "errorRate failed", "warning"))
    assert [c[0] for c in registry.calls] == ["tags", "tags", "tags"]
    assert a.sleeps == [0.5, 1.0]  # type: ignore[attr-defined]
    assert records[-1]["status"] == "True" and records[-1]["reason"] == "Tagged"
    registry, records = FakeRegistry([RegistryUnavailable("down")] * 100), []
    a = announcer(registry, records, attempts=4)
    a.notify(Announcement("r", "RolledBack", "errorRate failed", "warning"))
    assert len(registry.calls) == 4, "bounded"
    assert records[-1]["status"] == "False" and records[-1]["reason"] == "RegistryUnavailable"
    assert "could not tag the version of m version 2: down" in records[-1]["message"]


def test_a_refusal_is_not_retried_and_says_what_was_done() -> None:
    registry, records = FakeRegistry([RegistryRefused("no such version")]), []
    a = announcer(registry, records)
    a.notify(Announcement("r", "Promoted", "done"))
    assert [c[0] for c in registry.calls] == ["alias"]
    assert (
        records[-1]["reason"] == "RegistryRefused" and "could not move alias prod" in records[-1]["message"]
    )


def test_the_reason_is_redacted() -> None:
    from mesh_canary.redact import register_secret

    register_secret("s3cr3t-token-value")
    registry, records = FakeRegistry(), []
    announcer(registry, records).notify(
        Announcement("r", "RolledBack", "webhook https://x/?token=s3cr3t-token-value failed", "warning")
    )
    reason = registry.calls[-1][1]["mesh-canary.reason"]
    assert "s3cr3t-token-value" not in reason and reason == redact(reason)


def test_resolution_reuses_what_this_rollout_recorded_only() -> None:
    policy = replace(
        make_policy(),
        candidate=replace(make_policy().candidate, model="models:/m@challenger"),
        registry=RegistrySpec(tracking_uri="http://r"),
    )
    registry = FakeRegistry()
    assert resolve_versions(policy, registry, None)["candidate"].version == "7"
    from mesh_canary.core import engine

    saved = {
        "modelRegistry": {
            "policyFingerprint": engine.policy_fingerprint(policy),
            "versions": {"candidate": {"uri": "models:/m@challenger", "name": "m", "version": "2"}},
        }
    }
    assert resolve_versions(policy, registry, saved)["candidate"].version == "2"
    saved["modelRegistry"]["policyFingerprint"] = "another rollout"
    assert resolve_versions(policy, registry, saved)["candidate"].version == "7"


def test_each_retry_is_told_as_an_unknown_condition_before_the_outcome() -> None:
    registry, records, retries = FakeRegistry([RegistryUnavailable("down")] * 2), [], []
    a = announcer(registry, records, retrying=retries.append)
    a.notify(Announcement("r", "RolledBack", "errorRate failed", "warning"))
    assert [(c["status"], c["reason"]) for c in retries] == [("Unknown", "Retrying")] * 2
    assert (
        "could not tag the version of m version 2 (try 1 of at most 5), trying again in 0.5s: down"
        in (retries[0]["message"])
    )
    assert records[-1]["reason"] == "Tagged", "the outcome is recorded once, after the retries"
    assert len(records) == 1


def test_an_aborted_rollout_changes_nothing_and_says_so() -> None:
    registry, records = FakeRegistry(), []
    announcer(registry, records).notify(Announcement("r", "Aborted", "stopped: weights changed by hand"))
    assert registry.calls == []
    assert records[-1]["status"] == "False" and records[-1]["reason"] == "Aborted"
    assert "the registry was not changed" in records[-1]["message"]


def test_a_controller_resuming_a_finished_rollout_tells_the_registry_only_what_it_was_never_told() -> None:
    from mesh_canary.controller.admission import Admission
    from mesh_canary.controller.handler import RolloutHandler
    from mesh_canary.controller.registry import ControllerRegistry
    from mesh_canary.controller.settings import ControllerSettings
    from mesh_canary.core import engine
    from mesh_canary.run.clock import VirtualClock
    from tests.waiting import wait_for

    parts = ControllerRegistry(
        Admission(ControllerSettings()), VirtualClock(), lambda h: None, token_env=None, retry_s=1.0
    )
    h = RolloutHandler(key=("ns", "r"), obj={})
    done = replace(
        engine.start(make_policy(), 0.0).state, phase=engine.Phase.ROLLED_BACK, reason="errorRate failed"
    )
    told = {"conditions": [{"type": "RegistryUpdated", "status": "True", "reason": "Tagged", "message": ""}]}
    untold = {
        "conditions": [{"type": "RegistryUpdated", "status": "Unknown", "reason": "Retrying", "message": ""}]
    }
    for status in (told, {}):
        assert parts.resume(h, announcer(FakeRegistry(), []), done, status) is False
    running = replace(done, phase=engine.Phase.PROGRESSING)
    assert parts.resume(h, announcer(FakeRegistry(), []), running, untold) is False
    registry, records = FakeRegistry(), []
    assert parts.resume(h, announcer(registry, records), done, untold) is True
    wait_for("the registry told", lambda: records)
    assert registry.calls[-1][1]["mesh-canary.reason"] == "errorRate failed"
    assert records[-1]["reason"] == "Tagged"
