"""The Argo CD health check for ModelRollout (manifests/argocd/argocd-cm-patch.yaml), run by a
real Lua 5.1 interpreter (lupa; Argo CD's gopher-lua speaks 5.1) against status objects made
by the controller's own status builder (kube.status.render_status) from real engine states,
plus hand-written edge cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from mesh_canary.core import engine
from mesh_canary.core.engine import Command, Phase, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.kube.status import render_status, set_condition
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from tests.test_engine import ScriptedJudge, make_policy
from tests.test_runner import FakeMetrics, FakeRouter, Journal

PATCH = Path(__file__).parent.parent / "manifests" / "argocd" / "argocd-cm-patch.yaml"
KEY = "resource.customizations.health.mesh-canary.io_ModelRollout"


def health_script() -> str:
    doc = yaml.safe_load(PATCH.read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    script: str = doc["data"][KEY]
    return script


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """What Argo CD shows for ``obj``: the script runs with ``obj`` as a global and returns hs."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(health_script())
    return str(hs["status"]), str(hs["message"] or "")


def resource(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "mesh-canary.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": "fraud-scorer", "namespace": "models", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status_of(state: RolloutState | None, policy: Policy | None, **kw: Any) -> dict[str, Any]:
    return render_status(None, state=state, policy=policy, generation=1, now=1000.0, **kw)


def runner_for(
    policy: Policy, router: FakeRouter | None = None, errors_at: float | None = None
) -> RolloutRunner:
    return RolloutRunner(
        policy,
        router or FakeRouter(Journal()),
        FakeMetrics(errors_at=errors_at),
        None,
        _Quiet(),
        VirtualClock(),
        judge=ScriptedJudge(),
    )


def run(policy: Policy, errors_at: float | None = None, timeout_s: float | None = None) -> RolloutState:
    return runner_for(policy, errors_at=errors_at).run(timeout_s).state


def rollback_pending(policy: Policy) -> RolloutState:
    """A rollout whose rollback write keeps failing (a run would retry it forever: ticks here)."""
    runner = runner_for(policy, RollbackRefused(Journal()), errors_at=90.0)
    state = runner.start_or_resume()
    for _ in range(100):
        if state.rollback_pending:
            return state
        runner.clock.sleep(30.0)
        state = runner.tick_once()
    raise AssertionError("the rollback never became pending")


class _Quiet:
    def notify(self, announcement: object) -> None:
        pass


class RollbackRefused(FakeRouter):
    """Takes every write but the rollback's: the rollback stays pending."""

    def set_weights(self, weights: Weights) -> None:
        if weights == ALL_STABLE and self.weights != ALL_STABLE:
            raise ConnectionError("api server unreachable")
        super().set_weights(weights)


def states() -> dict[str, tuple[RolloutState | None, Policy | None, dict[str, Any]]]:
    """Real rollouts in every phase the controller shows, from the engine and the runner."""
    policy = make_policy()
    started = engine.start(policy, 0.0).state
    gated = make_policy(approval="beforePromotion")
    return {
        "pending": (None, None, {}),
        "invalid": (None, None, {"problems": ["spec.canary.steps[2]: 20 is not above the previous step 25"]}),
        "progressing": (started, policy, {}),
        "paused": (engine.command(policy, started, Command.PAUSE, 1.0).state, policy, {}),
        "waiting": (run(gated, timeout_s=3600), gated, {}),
        "promoted": (run(policy), policy, {}),
        "rolled back": (run(policy, errors_at=90.0), policy, {}),
        "rollback pending": (rollback_pending(policy), policy, {}),
        "aborted": (
            engine.moved_outside(started, 5.0, Weights(100, 0), "VirtualService fraud-scorer").state,
            policy,
            {},
        ),
    }


EXPECTED = {
    "pending": "Progressing",
    "invalid": "Degraded",
    "progressing": "Progressing",
    "paused": "Suspended",
    "waiting": "Suspended",
    "promoted": "Healthy",
    "rolled back": "Degraded",
    "rollback pending": "Degraded",
    "aborted": "Degraded",
}


@pytest.fixture(scope="module")
def made() -> dict[str, dict[str, Any]]:
    return {name: status_of(state, policy, **kw) for name, (state, policy, kw) in states().items()}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_status_the_controller_writes_has_its_health(made: dict[str, dict[str, Any]], name: str) -> None:
    status = made[name]
    got, message = health(resource(status))
    assert got == EXPECTED[name], (status["phase"], message)
    assert message  # Argo CD shows why


def test_the_states_are_the_phases_they_claim(made: dict[str, dict[str, Any]]) -> None:
    phases = {name: s["phase"] for name, s in made.items()}
    assert phases == {
        "pending": "Pending",
        "invalid": "Invalid",
        "progressing": Phase.PROGRESSING.value,
        "paused": Phase.PAUSED.value,
        "waiting": Phase.WAITING_FOR_APPROVAL.value,
        "promoted": Phase.SUCCEEDED.value,
        "rolled back": Phase.ROLLED_BACK.value,
        "rollback pending": phases["rollback pending"],  # whatever it shows, RollbackPending is True
        "aborted": Phase.ABORTED.value,
    }
    pending = [c for c in made["rollback pending"]["conditions"] if c["type"] == "RollbackPending"]
    assert pending and pending[0]["status"] == "True"


def test_messages_say_why(made: dict[str, dict[str, Any]]) -> None:
    _, message = health(resource(made["rolled back"]))
    assert message.startswith("RolledBack: ") and "errorRate" in message
    _, message = health(resource(made["rollback pending"]))
    assert message.startswith("rolling back: the write of 100% stable is failing")
    _, message = health(resource(made["invalid"]))
    assert "20 is not above the previous step 25" in message


# --------------------------------------------------------------------------- edge cases


def test_a_resource_the_controller_has_not_seen_yet_is_progressing() -> None:
    assert health(resource(None)) == ("Progressing", "waiting for the mesh-canary controller")
    assert health(resource({}))[0] == "Progressing"
    assert health(resource({"phase": "SomethingNew"}))[0] == "Progressing"


def test_a_spec_newer_than_what_the_controller_saw_is_progressing_whatever_the_phase(
    made: dict[str, dict[str, Any]],
) -> None:
    promoted = made["promoted"]
    assert health(resource(promoted, generation=1))[0] == "Healthy"
    assert health(resource(promoted, generation=2)) == (
        "Progressing",
        "the controller has not seen the latest spec yet",
    )


def test_reconciles_that_keep_failing_degrade_a_rollout_in_progress(made: dict[str, dict[str, Any]]) -> None:
    status = dict(made["progressing"])
    status["conditions"] = set_condition(
        status["conditions"], "Ready", "False", "ReconcileError", "the API server refused: 403", "t", 1
    )
    assert health(resource(status)) == ("Degraded", "the API server refused: 403")
    # The same condition after the rollout ended changes nothing: the outcome is what counts.
    done = dict(made["promoted"], conditions=status["conditions"])
    assert health(resource(done))[0] == "Healthy"


def test_a_rollback_pending_wins_over_any_phase(made: dict[str, dict[str, Any]]) -> None:
    status = dict(made["progressing"])
    status["conditions"] = set_condition(
        status["conditions"], "RollbackPending", "True", "WriteFailing", "503 from the API server", "t", 1
    )
    assert health(resource(status))[0] == "Degraded"
    assert health(resource(replace_phase(status, "Paused")))[0] == "Degraded"


def replace_phase(status: dict[str, Any], phase: str) -> dict[str, Any]:
    return {**status, "phase": phase}


def test_the_script_is_plain_lua_5_1() -> None:
    # gopher-lua has no goto, no integer division, no bit operators: the script must parse in 5.1.
    lua = lua51.LuaRuntime()
    assert lua.eval("_VERSION") == "Lua 5.1"
    lua.execute("return function() " + health_script() + " end")
