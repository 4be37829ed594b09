"""`simulate` runs through the production runner on a virtual clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh_canary.core.policy import load_policy_text
from mesh_canary.core.weights import Weights
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.simulation.simulate import SimulatedMesh, simulate_rollout
from mesh_canary.simulation.traffic import SyntheticMesh, load_scenario_text

ROOT = Path(__file__).resolve().parent.parent


def _inputs(scenario: str = "broken-errors.yaml") -> tuple[object, object]:
    policy = load_policy_text((ROOT / "policies/minimal.yaml").read_text())
    return policy, load_scenario_text((ROOT / "scenarios" / scenario).read_text())


def test_a_simulated_rollout_is_decided_by_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    turns: list[float] = []
    tick_once = RolloutRunner.tick_once

    def counted(self: RolloutRunner) -> object:
        turns.append(self.clock.now())
        return tick_once(self)

    monkeypatch.setattr(RolloutRunner, "tick_once", counted)
    policy, scenario = _inputs()
    result = simulate_rollout(policy, scenario, seed=7)  # type: ignore[arg-type]
    assert result["outcome"] == "rolled_back"
    assert len(turns) == result["ticks"] and turns[-1] == result["decidedAtS"]


def test_the_same_seed_gives_the_same_result_with_a_reused_mesh() -> None:
    policy, scenario = _inputs("aa.yaml")
    fresh = [simulate_rollout(policy, scenario, seed=s) for s in (1, 2)]  # type: ignore[arg-type]
    mesh = SyntheticMesh(scenario, seed=0)  # type: ignore[arg-type]
    reused = [simulate_rollout(policy, scenario, seed=s, mesh=mesh) for s in (1, 2)]  # type: ignore[arg-type]
    assert fresh == reused


def test_a_weight_write_takes_effect_at_the_clocks_time() -> None:
    _, scenario = _inputs("aa.yaml")
    clock = VirtualClock()
    mesh = SyntheticMesh(scenario, seed=3)  # type: ignore[arg-type]
    simulated = SimulatedMesh(mesh, clock)
    clock.sleep(600.0)
    simulated.set_weights(Weights.candidate_at(50))  # the first 10 minutes were all stable
    clock.sleep(600.0)
    before = simulated.read(0.0, 600.0)
    after = simulated.read(600.0, 1200.0)
    assert before.candidate.requests == 0 and after.candidate.requests > 0
    assert simulated.get_weights() == Weights.candidate_at(50)


def test_simulate_does_not_import_scipy_signal_before_a_check_needs_it() -> None:
    """scipy.signal took 2.4 s of a 5 s `simulate` (issue 14): only the ratio profile needs it."""
    code = (
        "import sys\n"
        "import mesh_canary.cli, mesh_canary.simulation.simulate, mesh_canary.core.judge\n"
        "print('scipy.signal' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
