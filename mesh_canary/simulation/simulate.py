"""`mesh-canary simulate`: a rollout through the production runner, against synthetic traffic
in virtual time.

No sleeping and no network: the runner that drives `mesh-canary run`, the demo and the
controller drives the engine here too, on a :class:`~mesh_canary.run.clock.VirtualClock`;
the synthetic mesh is its router (weights written at the clock's time) and its metrics
source (traffic generated up to the time read), so a decision seen in `simulate` is the
one production makes. The result fields are the contract of docs/simulation.md.
"""

from __future__ import annotations

from typing import Any

from mesh_canary.core import engine
from mesh_canary.core.engine import Outcome, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import Judge
from mesh_canary.core.weights import Weights
from mesh_canary.protocols import Announcement, Clock
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner, default_judge
from mesh_canary.simulation.traffic import Scenario, SyntheticMesh

__all__ = ["SimulatedMesh", "simulate_rollout"]

_EPS = 1e-9  # a tick this close to the scenario's end still happens


class SimulatedMesh:
    """The synthetic mesh as the runner sees a real one, on a virtual clock.

    A `TrafficRouter`: a weight write takes effect at the clock's time (the traffic before
    it is generated with the old weights). A `MetricsSource`: a read generates the traffic
    up to the time it reads, then counts it as Prometheus would.
    """

    def __init__(self, mesh: SyntheticMesh, clock: Clock) -> None:
        self.mesh = mesh
        self.clock = clock

    def set_weights(self, weights: Weights) -> None:
        self.mesh.advance(self.clock.now())
        self.mesh.set_weights(weights)

    def get_weights(self) -> Weights:
        return self.mesh.get_weights()

    def read(self, since: float, now: float) -> Observation:
        self.mesh.advance(now)
        return self.mesh.read(since, now)


class _Silent:
    """A Notifier for a simulation: nobody to tell."""

    def notify(self, announcement: Announcement) -> None:
        return None


def simulate_rollout(
    policy: Policy,
    scenario: Scenario,
    seed: int,
    judge: Judge | None = None,
    mesh: SyntheticMesh | None = None,
) -> dict[str, Any]:
    """One simulated rollout through the runner; returns the SIMULATION.md result object.

    ``mesh``: a SyntheticMesh of this scenario to reuse (it is reset with ``seed``), which
    is cheaper than building one per run when running many seeds."""
    if mesh is None or mesh.scenario is not scenario:
        mesh = SyntheticMesh(scenario, seed=seed)
    else:
        mesh.reset(seed)
    clock = VirtualClock()
    simulated = SimulatedMesh(mesh, clock)
    runner = RolloutRunner(policy, simulated, simulated, None, _Silent(), clock, judge or default_judge())
    state = runner.run(timeout_s=scenario.duration_s + _EPS).state
    result = _result(state, scenario, seed, mesh)
    if policy.fallback is not None:
        result.update(_after_fallback(state, scenario, mesh))
    return result


def _after_fallback(state: RolloutState, scenario: Scenario, mesh: SyntheticMesh) -> dict[str, Any]:
    """A policy with a fallback: what the fallback served to users from the switch (if the
    rollout switched to it) to the scenario's end; nothing moves it back (core/fallback.py)."""
    if state.weights.fallback:
        mesh.advance(scenario.duration_s)
    n, errors, wrong = mesh.fallback_served
    return {"fallbackRequests": n, "fallbackErrors": errors, "fallbackWrong": wrong}


def _result(state: RolloutState, scenario: Scenario, seed: int, mesh: SyntheticMesh) -> dict[str, Any]:
    outcome = (engine.outcome_of(state) or Outcome.TIMED_OUT).value
    decided = state.finished_at if state.finished_at is not None else scenario.duration_s
    if outcome == "timed_out":
        mesh.advance(scenario.duration_s)
    steps = []
    for s in state.steps:
        d = s.to_dict()
        if d["endS"] is None:
            d["endS"], d["verdict"] = decided, "inconclusive"
        steps.append(d)
    reason = (
        state.reason
        if outcome != "timed_out"
        else (
            f"still undecided at the scenario's end ({scenario.duration_s:.0f}s) in step {state.step_index + 1}"
        )
    )
    return {
        "seed": seed,
        "outcome": outcome,
        "reason": reason,
        "failedChecks": list(state.failed_checks),
        "decidedAtS": float(decided),
        "candidateRequests": int(mesh.candidate_served_requests),
        "candidateErrors": int(mesh.candidate_served_errors),
        "candidateWrong": int(mesh.candidate_served_wrong),
        "steps": steps,
        "ticks": state.ticks,
    }
