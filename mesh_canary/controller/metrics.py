"""The controller's own Prometheus metrics (what /metrics serves), in a registry of its own.

Two kinds: controller-wide (rollouts by phase, reconciles, leadership) and per rollout
(labels ``namespace`` and ``rollout``: phase, weight, step, each check's estimate, bounds and
verdict, analysis time, rollbacks by reason). The per-rollout series are bounded: a rollout
has a fixed number of them (see docs/controller.md), a check that no longer reports a
value loses its series, and every series of a deleted rollout is removed (`forget`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from mesh_canary.core.engine import Phase, RolloutState
from mesh_canary.core.model import Check, Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.verdicts import CheckResult, Judge, JudgeContext, Verdict
from mesh_canary.kube.status import rollback_category
from mesh_canary.protocols import MetricsSource

# Every phase a ModelRollout shows (the gauges have a series for each, zero included).
PHASES = ("Pending", "Invalid", *(p.value for p in Phase))
IN_FLIGHT_STATES = ("normal", "slow", "stuck")
VERDICTS = tuple(v.value for v in Verdict)
# Every value of `mesh_canary_rollbacks_total`'s reason (`rollback_category`), shown from 0.
ROLLBACK_CATEGORIES = (
    "checkFailed",
    "noData",
    "stepTimeout",
    "manual",
    "superseded",
    "deleted",
    "writeFailed",
)
ROLLOUT_LABELS = ("namespace", "rollout")
CHECK_LABELS = (*ROLLOUT_LABELS, "check", "metric")
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
ANALYSIS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Key = tuple[str, str]  # (namespace, name), as the handlers'


def rollback_reasons(failed_checks: Iterable[str]) -> list[str]:
    """The per-rollout counter's reasons for one rollback: each failed check's name, or the
    one-word cause (noData, stepTimeout, manual, ...) when no check failed."""
    failed = list(dict.fromkeys(failed_checks))
    category = rollback_category(failed)
    if category != "checkFailed":
        return [category]
    return failed or [category]


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
        self.tick_lateness = Histogram(
            "mesh_canary_tick_lateness_seconds",
            "How late an analysis started: its actual start minus the time it was due "
            "(the last analysis plus analysis.interval). Orders (annotations) run at once and are not counted.",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "mesh_canary_reconcile_errors", "Reconciles that failed and were retried.", registry=r
        )
        self.notifications = Counter(
            "mesh_canary_notifications",
            "Notifications by receiver kind and outcome: sent; failed (after retrying until the "
            "receiver's deadline); dropped (its queue was full).",
            ["receiver", "outcome"],
            registry=r,
        )
        self.leader = Gauge(
            "mesh_canary_leader", "1 while this replica reconciles (holds the Lease).", registry=r
        )
        self.prometheus_queries = Counter(
            "mesh_canary_prometheus_queries",
            "Instant queries sent to Prometheus, by metric family (traffic, latency, confusion, "
            "predictions, features; custom: a custom check's own) and batched: yes for one query "
            "shared by every rollout reading that family at that instant, no for one rollout's own.",
            ["family", "batched"],
            registry=r,
        )
        self.in_flight = Gauge(
            "mesh_canary_reconciles_in_flight",
            "Reconciles running now: normal, slow (no longer holding a worker) or stuck (/livez fails).",
            ["state"],
            registry=r,
        )

        # -- per rollout (the Grafana dashboard's; grafana/mesh-canary.json) --
        def gauge(name: str, doc: str, labels: Sequence[str]) -> Gauge:
            return Gauge(f"mesh_canary_rollout_{name}", doc, list(labels), registry=r)

        self.info = gauge(
            "info",
            "1 per rollout, with its stable and candidate versions and strategy.",
            [*ROLLOUT_LABELS, "stable", "candidate", "strategy"],
        )
        self.status = gauge(
            "status", "1 on the rollout's current phase, 0 on every other phase.", [*ROLLOUT_LABELS, "phase"]
        )
        self.step = gauge(
            "step_index",
            "The rollout's current step, counted from 0 (status.rollout.stepIndex).",
            ROLLOUT_LABELS,
        )
        self.steps = gauge("steps", "How many steps the rollout's plan has.", ROLLOUT_LABELS)
        self.estimate = gauge(
            "check_estimate",
            "Each check's latest estimate, in the check's own quantity (a rate, a ratio, seconds, a PSI).",
            CHECK_LABELS,
        )
        self.lower = gauge(
            "check_lower_bound",
            "The lower end of each check's confidence interval on its estimate.",
            CHECK_LABELS,
        )
        self.upper = gauge(
            "check_upper_bound",
            "The upper end of each check's confidence interval on its estimate.",
            CHECK_LABELS,
        )
        self.verdict = gauge(
            "check_verdict",
            "1 on each check's latest verdict (pass, fail, inconclusive), 0 on the others.",
            [*CHECK_LABELS, "verdict"],
        )
        self.analysis = Histogram(
            "mesh_canary_rollout_analysis_duration_seconds",
            "Time one analysis of one rollout spent reading its metrics and judging them.",
            list(ROLLOUT_LABELS),
            buckets=ANALYSIS_BUCKETS,
            registry=r,
        )
        self.rollout_rollbacks = Counter(
            "mesh_canary_rollout_rollbacks",
            "Rollbacks of one rollout, by reason: a failed check's name, or noData, stepTimeout, "
            "manual, superseded, writeFailed (a rollback two checks failed counts under both).",
            [*ROLLOUT_LABELS, "reason"],
            registry=r,
        )
        for phase in PHASES:
            self.rollouts.labels(phase).set(0)
        for state in IN_FLIGHT_STATES:
            self.in_flight.labels(state).set(0)
        for reason in ROLLBACK_CATEGORIES:
            self.rollbacks.labels(reason)
        # What each rollout has published: (metric, label values), so a rollout's own series
        # that no longer apply (a renamed check, new versions, a deleted rollout) are removed.
        self._shown: dict[Key, set[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}
        self._lock = threading.Lock()

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

    # -- per rollout ----------------------------------------------------------------------

    def show_rollout(self, key: Key, phase: str, state: RolloutState | None, policy: Policy | None) -> None:
        """Publish one rollout's series from its state (None: only the phase is known)."""
        namespace, name = key
        ids = (namespace, name)
        values: list[tuple[Gauge, tuple[str, ...], float]] = [
            (self.status, (*ids, p), 1.0 if p == phase else 0.0) for p in PHASES
        ]
        if policy is not None:
            info = (*ids, policy.stable.version, policy.candidate.version, policy.strategy)
            values.append((self.info, info, 1.0))
            plan = (
                len(policy.canary.steps) if policy.strategy == "canary" else 2
            )  # blueGreen: preview, switch
            values.append((self.steps, ids, float(plan)))
        if state is not None:
            values.append((self.weight, (name, namespace), float(state.weights.candidate)))
            values.append((self.step, ids, float(state.step_index)))
            for c in state.checks:
                values.extend(self._check_values(ids, c))
        shown: set[tuple[MetricWrapperBase, tuple[str, ...]]] = {(m, labels) for m, labels, _ in values}
        with self._lock:
            before = self._shown.get(key, set())
            for metric, labels in {s for s in before if isinstance(s[0], Gauge)} - shown:
                with contextlib.suppress(KeyError):
                    metric.remove(*labels)
            for gauge, labels, value in values:
                gauge.labels(*labels).set(value)
            # Counters and histograms stay until the rollout is forgotten.
            self._shown[key] = shown | {s for s in before if not isinstance(s[0], Gauge)}

    def _check_values(
        self, ids: tuple[str, str], c: CheckResult
    ) -> list[tuple[Gauge, tuple[str, ...], float]]:
        labels = (*ids, c.name, c.metric)
        out: list[tuple[Gauge, tuple[str, ...], float]] = [
            (self.verdict, (*labels, v), 1.0 if v == c.verdict.value else 0.0) for v in VERDICTS
        ]
        for metric, value in ((self.estimate, c.estimate), (self.lower, c.lower), (self.upper, c.upper)):
            if value is not None:
                out.append((metric, labels, float(value)))
        return out

    def rolled_back(self, key: Key, failed_checks: Sequence[str]) -> None:
        """Count one rollback of ``key`` (controller-wide by category, and per rollout by reason)."""
        self.rollbacks.labels(rollback_category(failed_checks)).inc()
        for reason in rollback_reasons(failed_checks):
            self._own(key, self.rollout_rollbacks, (*key, reason))
            self.rollout_rollbacks.labels(*key, reason).inc()

    def prometheus_query(self, family: str, batched: bool) -> None:
        """One query was sent to Prometheus (see `mesh_canary.metrics.coalesce`)."""
        self.prometheus_queries.labels(family, "yes" if batched else "no").inc()

    def notification(self, receiver: str, outcome: str) -> None:
        """One notification to a receiver of kind ``receiver`` was sent, failed or dropped."""
        self.notifications.labels(receiver, outcome).inc()

    def analysed(self, key: Key, seconds: float) -> None:
        """One analysis of ``key`` took ``seconds`` (its metrics read and judging)."""
        self._own(key, self.analysis, key)
        self.analysis.labels(*key).observe(seconds)

    def _own(self, key: Key, metric: MetricWrapperBase, labels: tuple[str, ...]) -> None:
        with self._lock:
            self._shown.setdefault(key, set()).add((metric, labels))

    def forget(self, key: Key) -> None:
        """Remove every series of a rollout that is gone (bounded cardinality)."""
        with self._lock:
            shown = self._shown.pop(key, set())
        shown.add((self.weight, (key[1], key[0])))
        for metric, labels in shown:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))


class Stopwatch:
    """Seconds spent in the calls it times since `reset` (one analysis: read + judge)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.reads = 0

    def reset(self) -> None:
        self.seconds, self.reads = 0.0, 0


class TimedSource:
    """A MetricsSource whose reads count on a Stopwatch."""

    def __init__(self, inner: MetricsSource, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    def read(self, since: float, now: float) -> Observation:
        started = time.monotonic()
        try:
            return self.inner.read(since, now)
        finally:
            self.watch.seconds += time.monotonic() - started
            self.watch.reads += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedJudge:
    """A Judge whose evaluations count on a Stopwatch (its other attributes are the inner one's)."""

    def __init__(self, inner: Judge, watch: Stopwatch) -> None:
        self.inner, self.watch = inner, watch

    def evaluate(self, checks: Sequence[Check], window: Observation, ctx: JudgeContext) -> list[CheckResult]:
        started = time.monotonic()
        try:
            return self.inner.evaluate(checks, window, ctx)
        finally:
            self.watch.seconds += time.monotonic() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
