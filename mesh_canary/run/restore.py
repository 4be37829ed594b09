"""`rollout restore-stable --state FILE -f POLICY`: a person brings traffic from the fallback
back to stable for a `mesh-canary run --state FILE` rollout (core/fallback.py). The one write
(100% stable, made like a rollback's) goes through the runner, so it is recorded on the
route, saved in the state file and announced exactly as the controller's would be.

For a ModelRollout the same order is an annotation the controller handles (kube/orders.py).
"""

from __future__ import annotations

from mesh_canary.core import engine
from mesh_canary.core.engine import RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.errors import BadInput, CouldNotWork
from mesh_canary.kube.orders import refusal
from mesh_canary.notify import notifier_for_policy
from mesh_canary.protocols import TrafficRouter
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import FileStateStore
from mesh_canary.run.verbs import load_state


class _NotRead:
    """The runner's metrics source for this one order: nothing is judged, nothing is read."""

    def read(self, since: float, now: float) -> Observation:
        return Observation(since, now, problem="restore-stable judges nothing")


def restore_state_file(policy: Policy, path: str, router: TrafficRouter) -> RolloutState:
    """Write 100% stable over the fallback of the rollout saved in ``path`` (run under
    ``policy``); BadInput (nothing written) when the file holds another rollout or traffic is
    not on the fallback; CouldNotWork when the write did not go through (the state file then
    says the write is pending: the next `mesh-canary run --state FILE` retries it)."""
    state = load_state(path)
    if state.name != policy.name or state.policy_fingerprint != engine.policy_fingerprint(policy):
        raise BadInput(f"{path} holds a rollout of another policy than {policy.name}'s; nothing was changed")
    problem = refusal("restore-stable", state.name, {"weights": state.weights.to_dict()})
    if problem is not None:
        raise BadInput(problem + "; nothing was changed")
    notifier = notifier_for_policy(policy.notifications)
    try:
        runner = RolloutRunner(policy, router, _NotRead(), FileStateStore(path), notifier, SystemClock())
        runner.state = state  # the saved rollout as it is: never started or resumed here
        done = runner.restore_stable()
    finally:
        notifier.close()
    if done.rollback_pending:
        raise CouldNotWork(
            f"the write of 100% stable did not go through ({done.reason}); traffic is still on the fallback"
        )
    return done
