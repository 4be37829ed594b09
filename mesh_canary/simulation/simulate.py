"""`mesh-canary simulate`: the real engine and judge against synthetic traffic in virtual time.

No sleeping and no network: each analysis interval the synthetic mesh draws the counts that
routing every request at random would give, and the engine decides exactly as it would in
production. The result fields are the contract of docs/simulation.md.
"""

from __future__ import annotations

from typing import Any

from mesh_canary.core import engine
from mesh_canary.core.engine import Decision, Outcome
from mesh_canary.core.judge import AnytimeJudge
from mesh_canary.core.model import Policy
from mesh_canary.core.verdicts import Judge
from mesh_canary.simulation.traffic import Scenario, SyntheticMesh


def simulate_rollout(
    policy: Policy,
    scenario: Scenario,
    seed: int,
    judge: Judge | None = None,
    mesh: SyntheticMesh | None = None,
) -> dict[str, Any]:
    """One simulated rollout; returns the SIMULATION.md result object.

    ``mesh``: a SyntheticMesh of this scenario to reuse (it is reset with ``seed``), which
    is cheaper than building one per run when running many seeds."""
    judge = judge or AnytimeJudge()
    if mesh is None or mesh.scenario is not scenario:
        mesh = SyntheticMesh(scenario, seed=seed)
    else:
        mesh.reset(seed)

    def apply(d: Decision) -> engine.RolloutState:
        for write in d.weight_writes:
            mesh.set_weights(write.weights)
        return d.state

    state = apply(engine.start(policy, 0.0))
    interval = policy.analysis.interval_s
    t = 0.0
    while not state.terminal:
        t_next = t + interval
        if t_next > scenario.duration_s + 1e-9:
            break
        mesh.advance(t_next)
        t = t_next
        state = apply(engine.tick(policy, state, mesh.read(state.window_start, t), t, judge))

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
