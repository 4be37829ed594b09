"""The MLflow registry adapter against a real ``mlflow server`` (sqlite backend) started here.

mlflow is in the test extra only; the package talks to it over REST (mesh_canary.registry.mlflow).
A registry that never answers is a real socket on 127.0.0.1 that accepts and stays silent.
"""

from __future__ import annotations

import pathlib
import socket
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from mesh_canary.core.model import Policy, RegistrySpec
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.notify import notifier_for_policy
from mesh_canary.protocols import Announcement
from mesh_canary.registry import RegistryInputError, registry_for
from mesh_canary.registry.announce import KEY, RegistryStartError, start_registry_run
from mesh_canary.registry.mlflow import MlflowRegistry, RegistryRefused, RegistryUnavailable
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import FileStateStore
from tests.mlflow_server import Mlflow
from tests.mlflow_server import mlflow_server as mlflow_server  # the fixture
from tests.mlflow_server import model as model  # the fixture
from tests.test_engine import ScriptedJudge, make_policy
from tests.test_runner import FakeMetrics, FakeRouter, Journal
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def policy(url: str, name: str) -> Policy:
    base = make_policy()
    return replace(
        base,
        stable=replace(base.stable, model=f"models:/{name}@champion"),
        candidate=replace(base.candidate, model=f"models:/{name}@challenger"),
        registry=RegistrySpec(tracking_uri=url, timeout_s=5.0),
    )


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers: a registry that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_aliases_and_versions_resolve_and_errors_are_typed(mlflow_server: Mlflow, model: str) -> None:
    registry = MlflowRegistry(mlflow_server.url)
    assert registry.resolve(f"models:/{model}@challenger").version == "2"
    assert registry.resolve(f"models:/{model}/3").version == "3"
    with pytest.raises(RegistryRefused, match="alias nope not found"):
        registry.resolve(f"models:/{model}@nope")
    with pytest.raises(RegistryRefused, match="HTTP 404"):
        registry.resolve(f"models:/{model}/9")
    with pytest.raises(RegistryInputError, match="is not a model URI"):
        registry.resolve("runs:/abc/model")


def test_promotion_moves_the_alias_and_tags_the_candidates_version(mlflow_server: Mlflow, model: str) -> None:
    pol = policy(mlflow_server.url, model)
    run = start_registry_run(pol, _store())
    assert run is not None
    assert {r: v.version for r, v in run.versions.items()} == {"stable": "1", "candidate": "2"}
    run.announcer.notify(Announcement(pol.name, "Promoted", "promoted to 100%"))
    assert mlflow_server.alias(model, "champion") == "2"
    tags = mlflow_server.tags(model, "2")
    assert tags["mesh-canary.rollout"] == f"{pol.namespace}/{pol.name}"
    assert tags["mesh-canary.result"] == "promoted"
    assert time.strptime(tags["mesh-canary.time"], "%Y-%m-%dT%H:%M:%SZ")
    assert run.announcer.condition is not None and run.announcer.condition["status"] == "True"
    assert run.announcer.condition["reason"] == "AliasMoved"


def test_rollback_tags_the_reason_and_the_alias_stays(mlflow_server: Mlflow, model: str) -> None:
    pol = policy(mlflow_server.url, model)
    run = start_registry_run(pol, _store())
    assert run is not None
    run.announcer.notify(Announcement(pol.name, "RolledBack", "errorRate failed: 4.1% > 1%", "warning"))
    assert mlflow_server.alias(model, "champion") == "1", "a rollback never moves the alias"
    tags = mlflow_server.tags(model, "2")
    assert tags["mesh-canary.result"] == "rolled-back"
    assert tags["mesh-canary.reason"] == "errorRate failed: 4.1% > 1%"
    assert run.announcer.condition is not None and run.announcer.condition["reason"] == "Tagged"


def test_a_restart_keeps_the_version_resolved_at_start(mlflow_server: Mlflow, model: str) -> None:
    pol = policy(mlflow_server.url, model)
    store = _store()
    first = start_registry_run(pol, store)
    assert first is not None
    first.store.save(_saved_state(pol))
    assert store.load()[KEY]["versions"]["candidate"]["version"] == "2"  # type: ignore[index]
    mlflow_server.post("registered-models/alias", name=model, alias="challenger", version="3")
    again = start_registry_run(pol, store)
    assert again is not None and again.versions["candidate"].version == "2", "resolved once, at start"
    fresh = start_registry_run(pol, _store())
    assert fresh is not None and fresh.versions["candidate"].version == "3"


def test_an_unknown_alias_at_start_is_one_sentence_and_nothing_starts(
    mlflow_server: Mlflow, model: str
) -> None:
    pol = policy(mlflow_server.url, model)
    pol = replace(pol, candidate=replace(pol.candidate, model=f"models:/{model}@missing"))
    with pytest.raises(RegistryStartError, match=f"the candidate's model models:/{model}@missing could not"):
        start_registry_run(pol, _store())


def test_a_hanging_registry_never_delays_the_rollback_and_ends_in_a_false_condition(
    mlflow_server: Mlflow, model: str, tmp_path: pathlib.Path
) -> None:
    pol = policy(mlflow_server.url, model)
    store = FileStateStore(tmp_path / "state.json")
    run = start_registry_run(pol, store, budget_s=8.0, backoff_s=0.2)  # resolved while the registry is up
    assert run is not None
    silent = SilentServer()
    try:
        # From now on the registry hangs: each call ends by its 1 s deadline, retried within 8 s.
        run.announcer.registry = MlflowRegistry(silent.url, timeout_s=1.0)
        notifier = notifier_for_policy((), extra=[run.announcer])
        journal = Journal()
        router = FakeRouter(journal)
        runner = RolloutRunner(
            pol,
            router,
            FakeMetrics(errors_at=90.0),
            run.store,
            notifier,
            VirtualClock(),
            judge=ScriptedJudge(),
        )
        result = runner.run()
        # The rollout is over while the registry has not answered yet: it did not wait for it.
        assert run.announcer.condition is None
        assert result.outcome == "rolled_back" and router.weights == ALL_STABLE
        assert [w for kind, w in journal.entries if kind == "weights"][-1] == ALL_STABLE
        wait_for("the registry update to give up", lambda: run.announcer.condition is not None, timeout_s=60)
        condition = run.announcer.condition
        assert condition is not None and condition["status"] == "False"
        assert condition["reason"] == "RegistryUnavailable" and "did not answer" in condition["message"]
        saved = store.load()
        assert saved is not None and saved[KEY]["condition"]["status"] == "False"
        assert saved["phase"] == "RolledBack"
        notifier.close()
    finally:
        silent.close()
    assert mlflow_server.alias(model, "champion") == "1"


def test_the_registry_is_chosen_by_its_one_registry_line() -> None:
    spec = RegistrySpec(tracking_uri="http://127.0.0.1:9", provider="nexus")
    with pytest.raises(RegistryInputError, match="no model registry 'nexus'; known registries: mlflow"):
        registry_for(spec)
    with pytest.raises(RegistryInputError, match="MC_TEST_UNSET_TOKEN, which is not set"):
        registry_for(RegistrySpec(tracking_uri="http://127.0.0.1:9", token_from_env="MC_TEST_UNSET_TOKEN"))
    assert isinstance(registry_for(RegistrySpec(tracking_uri="http://127.0.0.1:9")), MlflowRegistry)
    with pytest.raises(RegistryUnavailable, match="did not answer"):
        MlflowRegistry("http://127.0.0.1:9", timeout_s=2).resolve("models:/m/1")


def _store() -> FileStateStore:
    """A state file of its own (tests here need several per test)."""
    return FileStateStore(pathlib.Path(tempfile.mkdtemp(prefix="mc-registry-")) / "state.json")


def _saved_state(pol: Policy) -> dict[str, Any]:
    from mesh_canary.core import engine

    decision = engine.start(pol, 0.0)
    return decision.state.to_dict()
