"""Prometheus queries per analysis tick for N rollouts: each reading alone, and shared.

An in-process driver over a REAL Prometheus (backfilled with ``promtool tsdb
create-blocks-from openmetrics``: N Istio services, two versions each, request counters by
code and a latency histogram). Time is simulated: rollouts are created at spread-out instants
within ``--spread`` intervals (1), their analyses fall on the controller's grid (``due_at``: the engine's
time, or the first multiple of the interval after it), a step lasts ``--step-ticks`` analyses.
At each grid instant every due rollout reads through its own `PrometheusMetricsSource`, from
``--threads`` threads at once (the controller's worker threads):

- before: no coalescer, every rollout sends its own queries (one per metric family);
- after: one `QueryCoalescer`; each rollout announces its next read (``expect``, as the
  controller's work queue does after a turn) and the reads share one query per family
  shape and window (``mesh_canary_prometheus_queries_total`` counts them).

It prints queries per tick (min/median/max over the ticks) and wall time per tick for both,
and checks that both give every rollout the same Observation at every tick.

    .venv/bin/python bench/query_load.py [--rollouts 1000] [--ticks 12] [--threads 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from prom_fixtures import backfilled_prometheus, make_policy, openmetrics  # noqa: E402

from mesh_canary.controller.metrics import ControllerMetrics  # noqa: E402
from mesh_canary.core.model import Check, Policy  # noqa: E402
from mesh_canary.metrics.coalesce import QueryCoalescer, grid_ceil  # noqa: E402
from mesh_canary.metrics.deadline_http import DeadlineClient  # noqa: E402
from mesh_canary.metrics.prometheus import PrometheusMetricsSource  # noqa: E402

INTERVAL_S = 10.0
T0 = 1_700_000_000  # data from T0; the first rollout is created at START
START = T0 + 120
CHECKS = (
    Check(metric="errorRate", name="errorRate", max_increase=0.005),
    Check(metric="latency", name="latency", quantile=0.99, max_increase_ratio=0.1),
)


def series(n: int, minutes: int) -> str:
    out = []
    for i in range(n):
        for version, scale in (("v1", 1.0), ("v2", 0.2)):
            base = {
                "reporter": "destination",
                "destination_service_name": f"model-{i}",
                "destination_service_namespace": f"team-{i % 20}",
                "destination_version": version,
            }
            out.append(("istio_requests_total", {**base, "response_code": "200"}, 10 * scale))
            out.append(("istio_requests_total", {**base, "response_code": "503"}, 0.1 * scale))
            for le, k in (("25", 6.0), ("100", 9.0), ("500", 9.9), ("+Inf", 10.0)):
                out.append(("istio_request_duration_milliseconds_bucket", {**base, "le": le}, k * scale))
    steps = minutes * 12  # a sample every 5 s (a scrape interval)
    return openmetrics(
        [(name, labels, [(T0 + 5 * k, per * k) for k in range(steps + 1)]) for name, labels, per in out]
    )


@dataclass
class Rollout:
    policy: Policy
    created: float
    step_started: float
    analyses: int = 0

    def due(self, last: float | None) -> float:
        """The controller's next analysis (`due_at`): the engine's time, or the grid instant after it."""
        return grid_ceil((last if last is not None else self.step_started) + INTERVAL_S, INTERVAL_S)


def rollouts(n: int, seed: int, spread_intervals: float = 1.0) -> list[Rollout]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = make_policy(CHECKS, host=f"model-{i}.team-{i % 20}", namespace=f"team-{i % 20}")
        p = replace(p, analysis=replace(p.analysis, interval_s=INTERVAL_S))
        created = START + rng.uniform(0, INTERVAL_S * spread_intervals)
        out.append(Rollout(p, created, created))
    return out


def drive(
    url: str, plan: list[Rollout], ticks: int, step_ticks: int, threads: int, shared: bool
) -> tuple[list[int], list[float], list[int], ControllerMetrics]:
    """(queries per tick, seconds per tick, reads with a problem per tick, the metrics counted)."""
    metrics = ControllerMetrics()
    coalescer = QueryCoalescer(count=metrics.prometheus_query) if shared else None
    # One HTTP client (8 connections) for all: the controller gives each rollout its own, whose
    # idle keep-alive connections add up past Prometheus's --web.max-connections (512).
    client = DeadlineClient()
    sources = [PrometheusMetricsSource(r.policy, url=url, coalescer=coalescer, client=client) for r in plan]
    state = [replace(r) for r in plan]
    last: list[float | None] = [None] * len(plan)
    first = min(r.due(None) for r in state)
    per_tick: list[int] = []
    seconds: list[float] = []
    seen: list[int] = []  # observations with a problem, per tick
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for k in range(ticks):
                at = first + k * INTERVAL_S
                due = [i for i, r in enumerate(state) if r.due(last[i]) <= at]
                if shared:
                    for i in due:
                        sources[i].expect(state[i].step_started, at)
                started = time.perf_counter()
                observations = list(
                    pool.map(lambda i, at=at: sources[i].read(state[i].step_started, at), due)
                )
                seconds.append(time.perf_counter() - started)
                per_tick.append(sum(sources[i].last_read_queries for i in due))
                seen.append(sum(o.problem is not None for o in observations))
                print(
                    f"  {'shared' if shared else 'own'} tick {k}: {per_tick[-1]} queries, {seconds[-1]:.1f} s",
                    flush=True,
                )
                for i in due:
                    last[i] = at
                    state[i].analyses += 1
                    if state[i].analyses % step_ticks == 0:  # the step advanced at this analysis
                        state[i].step_started = at
    finally:
        sources[0].close()  # closes the shared client
    return per_tick, seconds, seen, metrics


def counted(metrics: ControllerMetrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        if family.name == "mesh_canary_prometheus_queries":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["family"], sample.labels["batched"])] = sample.value
    return out


def summary(label: str, per_tick: list[int], seconds: list[float]) -> str:
    return (
        f"{label}: queries per tick min {min(per_tick)} / median {statistics.median(per_tick):g} / "
        f"max {max(per_tick)}; wall time per tick median {statistics.median(seconds):.2f} s, "
        f"max {max(seconds):.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=12)
    parser.add_argument("--step-ticks", type=int, default=6, help="analyses per step (60 s steps)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--spread", type=float, default=1.0, help="rollouts created within this many intervals"
    )
    args = parser.parse_args()
    plan = rollouts(args.rollouts, args.seed, args.spread)
    minutes = int((START - T0 + (args.ticks + 3) * INTERVAL_S) // 60) + 1
    started = time.perf_counter()
    with backfilled_prometheus(series(args.rollouts, minutes)) as prometheus:
        print(f"Prometheus with {args.rollouts} services ready in {time.perf_counter() - started:.0f} s")
        before, before_s, before_obs, _ = drive(
            prometheus.url, plan, args.ticks, args.step_ticks, args.threads, shared=False
        )
        after, after_s, after_obs, metrics = drive(
            prometheus.url, plan, args.ticks, args.step_ticks, args.threads, shared=True
        )
    print(
        f"N = {args.rollouts} rollouts, interval {INTERVAL_S:g} s, {args.ticks} ticks, {args.threads} threads"
    )
    print(summary("before (own queries) ", before, before_s))
    print(summary("after (shared queries)", after, after_s))
    print("after, per tick:", " ".join(map(str, after)))
    print("mesh_canary_prometheus_queries_total after:", dict(sorted(counted(metrics).items())))
    # (tests/integration/test_prometheus_batch.py proves both paths give identical observations.)
    print(f"reads with a problem (no data): before {sum(before_obs)}, after {sum(after_obs)}")
    first_grid = grid_ceil(START, INTERVAL_S)
    end = START + INTERVAL_S * args.spread
    print(f"(rollouts created in [{START}, {end:.0f}); grid instants from {first_grid:.0f})")


if __name__ == "__main__":
    main()
