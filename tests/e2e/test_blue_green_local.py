"""Blue/green on the embedded local mesh: the candidate is judged on mirrored (shadow)
traffic through a real Envoy, then takes 100% at once; a bad one never takes live traffic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mesh_canary.core.model import BlueGreenSpec, CanarySpec
from mesh_canary.core.weights import Weights
from mesh_canary.notify import LogNotifier
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.demo import demo_policy
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import MemoryStateStore
from mesh_canary.run.wiring import local_backend


class RecordingRouter:
    """The real LocalRouter, with a record of every write (to see what users were sent to)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.writes: list[Weights] = []

    def set_weights(self, weights: Weights) -> None:
        self.inner.set_weights(weights)  # type: ignore[attr-defined]
        self.writes.append(weights)

    def get_weights(self) -> Weights:
        return self.inner.get_weights()  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(("degraded", "outcome"), [(False, "promoted"), (True, "rolled_back")])
def test_blue_green_previews_on_mirrored_traffic(degraded: bool, outcome: str) -> None:
    policy = replace(
        demo_policy(),
        strategy="blueGreen",
        blue_green=BlueGreenSpec(mirror_percent=100, preview_duration_s=8, post_switch_window_s=6),
        canary=CanarySpec(max_step_duration_s=60),
    )
    with local_backend(policy, degraded, rps=100.0, metrics_mode="direct") as (router, metrics, mesh):
        recording = RecordingRouter(router)
        runner = RolloutRunner(policy, recording, metrics, MemoryStateStore(), LogNotifier(), SystemClock())
        result = runner.run(timeout_s=90)
        assert result.outcome == outcome, result.state.reason
        # Preview: no live traffic to the candidate, a full shadow copy.
        assert recording.writes[0] == Weights(100, 0, mirror_percent=100)
        if degraded:
            assert recording.writes[1:] == [Weights(100, 0)], "a bad candidate never took live traffic"
            assert result.state.steps[0].verdict == "fail"
        else:
            assert recording.writes[1:] == [Weights(5, 95), Weights(0, 100)]
            assert router.get_weights() == Weights(0, 100)
        # The candidate did see the mirrored requests it was judged on.
        assert mesh.requests_served(policy.candidate.metrics_version) > 100  # type: ignore[attr-defined]
