"""The controller's own Prometheus metrics (what /metrics serves), in a registry of its own."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from mesh_canary.core.engine import Phase

# Every phase a ModelRollout shows (the gauge has a series for each, zero included).
PHASES = ("Pending", "Invalid", *(p.value for p in Phase))
IN_FLIGHT_STATES = ("normal", "slow", "stuck")


class ControllerMetrics:
    """The controller's own Prometheus metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rollouts = Gauge("mesh_canary_rollouts", "ModelRollouts by phase.", ["phase"], registry=r)
        self.weight = Gauge(
            "mesh_canary_rollout_candidate_weight_percent",
            "Percent of live traffic on the candidate, per rollout.",
            ["rollout", "namespace"],
            registry=r,
        )
        self.reconcile = Histogram(
            "mesh_canary_reconcile_duration_seconds",
            "Time one reconcile of one rollout took (metrics read, judging, writes).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rollbacks = Counter(
            "mesh_canary_rollbacks", "Rollbacks to 100% stable, by reason.", ["reason"], registry=r
        )
        self.ticks = Counter("mesh_canary_ticks", "Analyses run (engine ticks).", registry=r)
        self.errors = Counter(
            "mesh_canary_reconcile_errors", "Reconciles that failed and were retried.", registry=r
        )
        self.leader = Gauge(
            "mesh_canary_leader", "1 while this replica reconciles (holds the Lease).", registry=r
        )
        self.in_flight = Gauge(
            "mesh_canary_reconciles_in_flight",
            "Reconciles running now: normal, slow (no longer holding a worker) or stuck (/livez fails).",
            ["state"],
            registry=r,
        )
        for phase in PHASES:
            self.rollouts.labels(phase).set(0)
        for state in IN_FLIGHT_STATES:
            self.in_flight.labels(state).set(0)

    def set_phases(self, phases: Iterable[str]) -> None:
        """The rollouts gauge from every known rollout's phase (phases absent now read 0)."""
        counts = dict.fromkeys(PHASES, 0)
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.rollouts.labels(phase).set(n)

    def set_in_flight(self, normal: int, slow: int, stuck: int) -> None:
        for state, n in zip(IN_FLIGHT_STATES, (normal, slow, stuck), strict=True):
            self.in_flight.labels(state).set(n)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))
