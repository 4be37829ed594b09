"""The simulator's real-traffic features (issue 10): bursts, shared changes, heavy latency
tails, per-pod series and Prometheus-style counting. Statistical, seeded, never timed:
tolerances are about 4-5 standard deviations unless said otherwise."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mesh_canary.core.weights import Weights
from mesh_canary.simulation.bursts import NO_BURST, Burst, draw_schedule
from mesh_canary.simulation.latency_shapes import Tail, bucket_shares
from mesh_canary.simulation.traffic import (
    ISTIO_LATENCY_BUCKETS_MS,
    Scenario,
    ScenarioError,
    SyntheticMesh,
    load_scenario,
    load_scenario_text,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"

BASE: dict[str, Any] = {
    "duration": "2h",
    "traffic": {"rps": 20},
    "versions": {
        "stable": {
            "errorRate": 0.005,
            "latency": {"medianMs": 80, "p99Ms": 250},
            "accuracy": 0.9,
            "labels": {"delayMeanS": 60, "missing": 0.2},
            "predictions": [0.7, 0.2, 0.1],
        },
        "candidate": {},
    },
}
EACH_BURST = {"versions": "each", "errorRate": 0.05, "duration": "60s", "every": "10m"}


def scenario(**top: Any) -> Scenario:
    doc = copy.deepcopy(BASE)
    doc.update(top)
    return load_scenario(doc, "test")


def problems_of(**top: Any) -> dict[str, str]:
    doc = copy.deepcopy(BASE)
    doc.update(top)
    with pytest.raises(ScenarioError) as info:
        load_scenario(doc, "bad.yaml")
    return dict(info.value.problems)


def per_interval(mesh: SyntheticMesh, until: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(stable, candidate) rows of (requests, errors) per consecutive window of ``step``."""
    rows: list[list[float]] = []
    t = mesh.now
    while t < until - 1e-9:
        start, t = t, t + step
        mesh.advance(t)
        o = mesh.read(start, t)
        rows.append([o.stable.requests, o.stable.errors, o.candidate.requests, o.candidate.errors])
    a = np.asarray(rows)
    return a[:, :2], a[:, 2:]


def vmr(x: np.ndarray) -> float:
    return float(x.var(ddof=1) / x.mean())


# --------------------------------------------------------------------------- compatibility

# sha256 prefixes of these reads, computed with the generator as it was before issue 10.
BEFORE_ISSUE_10 = {
    "aa": "f5797ca988d2936f",
    "drift": "4d3133c6f0c4d858",
    "breaks-halfway": "71b1376309e9f0ef",
    "slow-p99": "3794a920824a136f",
}


def fingerprint(s: Scenario) -> str:
    h = hashlib.sha256()
    for seed in (0, 1):
        mesh = SyntheticMesh(s, seed=seed)
        t = 0.0
        for weight in (5, 50, 100):
            mesh.set_weights(Weights.candidate_at(weight))
            for _ in range(20):
                t += 30.0
                mesh.advance(t)
                h.update(repr(mesh.read(max(t - 90.0, 0.0), t)).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE_ISSUE_10))
def test_old_scenarios_draw_exactly_what_they_drew_before(name: str) -> None:
    path = SCENARIOS / f"{name}.yaml"
    assert fingerprint(load_scenario_text(path.read_text(), str(path))) == BEFORE_ISSUE_10[name]


def test_pods_alone_and_empty_bursts_change_nothing() -> None:
    """Pods only matter to Prometheus counting; an empty bursts list is no bursts."""
    plain = fingerprint(scenario())
    assert fingerprint(scenario(bursts=[], pods={"count": 5, "errorSpread": 1.0})) == plain
    assert plain == BEFORE_ISSUE_10["aa"]


# --------------------------------------------------------------------------- validation


def test_new_fields_are_validated_with_their_paths() -> None:
    problems = problems_of(
        bursts=[
            {"versions": "some", "errorRate": 2, "duration": "60s", "every": "30s"},
            {"errorRate": 0.1, "every": "1m", "latencyFactor": 0, "colour": "red"},
        ],
        pods={"count": 2.5},
        prometheus={"scrapeInterval": "15s", "jitter": "8s", "extrapolate": "yes", "counterResets": -1},
    )
    assert set(problems) >= {
        "bursts[0].versions",
        "bursts[0].errorRate",
        "bursts[0].every",
        "bursts[1].colour",
        "pods.count",
        "prometheus.jitter",
        "prometheus.extrapolate",
        "prometheus.counterResets",
    }
    assert "must be longer than duration" in problems["bursts[0].every"]
    doc = copy.deepcopy(BASE)
    doc["versions"]["stable"]["latency"]["tail"] = {"share": 0.01, "alpha": 0}
    doc["versions"]["candidate"] = {"latency": {"tail": {"share": 2}}}
    with pytest.raises(ScenarioError) as info:
        load_scenario(doc, "bad.yaml")
    got = dict(info.value.problems)
    assert set(got) == {"versions.stable.latency.tail.alpha", "versions.candidate.latency.tail.share"}


def test_tails_are_inherited_and_can_be_removed() -> None:
    doc = copy.deepcopy(BASE)
    doc["versions"]["stable"]["latency"]["tail"] = {"share": 0.01, "alpha": 1.5}
    doc["versions"]["candidate"] = {"latency": {"p99Ms": 300, "tail": {"alpha": 1.2}}}
    doc["changes"] = [{"at": "10m", "candidate": {"latency": {"tail": None}}}]
    s = load_scenario(doc, "test")
    assert s.stable.latency.tail == Tail(0.01, 1.5)
    assert s.candidate.latency.tail == Tail(0.01, 1.2) and s.candidate.latency.median_ms == 80.0
    assert s.changes[0].candidate.latency.tail is None


@pytest.mark.parametrize("name", ["bursts", "shared-change", "prometheus-counting"])
def test_example_scenarios_load_and_run_through_the_cli(name: str) -> None:
    path = SCENARIOS / f"{name}.yaml"
    s = load_scenario_text(path.read_text(), str(path))
    assert s.candidate == s.stable  # all three are A/A
    done = subprocess.run(
        [sys.executable, "-m", "mesh_canary", "simulate", "-f", str(ROOT / "policies/minimal.yaml"),
         "--scenario", str(path), "--seed", "3", "--runs", "2", "-o", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["seed"] for r in runs] == [3, 4]
    assert all(r["outcome"] in {"promoted", "rolled_back", "timed_out"} for r in runs)


# --------------------------------------------------------------------------- bursts


def test_burst_schedule_covers_duration_over_every_of_the_time() -> None:
    burst = Burst("each", 0.05, 60.0, 600.0)
    until = 2000 * 3600.0
    schedule = draw_schedule((burst,), until, np.random.default_rng(5))
    starts = [0.0, *schedule.edges]
    lengths = np.diff([*starts, until])[: len(schedule.edges)]
    for version in (0, 1):
        on = np.array([state[version] != NO_BURST for state in schedule.state[: len(lengths)]])
        share = float(lengths[on].sum() / until)
        # 12,000 bursts per version: the share's sd is about 0.1 * 0.9 / sqrt(12000) < 0.001.
        assert abs(share - 0.1) < 0.005, share
        bursts = int(np.sum(np.diff(np.concatenate(([0], on.astype(int)))) == 1))
        assert abs(bursts - until / 600.0) < 5 * math.sqrt(until / 600.0)
    both = np.array([s[0] != NO_BURST and s[1] != NO_BURST for s in schedule.state[: len(lengths)]])
    assert abs(float(lengths[both].sum() / until) - 0.01) < 0.003  # independent: 0.1 x 0.1


def test_per_version_bursts_overdisperse_errors_and_keep_the_long_run_mean() -> None:
    """Bursts of 5% for 60 s every 10 min on a 0.5% base: per-30 s error counts have a
    variance-to-mean ratio far above 1, and the mean is 0.005 x 0.9 + 0.05 x 0.1."""
    hours = 60
    bursty = SyntheticMesh(
        scenario(duration=f"{hours}h", bursts=[EACH_BURST]), seed=11, weights=Weights.candidate_at(50)
    )
    stable, candidate = per_interval(bursty, hours * 3600.0, 30.0)
    expected = 0.005 * 0.9 + 0.05 * 0.1
    for version in (stable, candidate):
        rate = version[:, 1].sum() / version[:, 0].sum()
        # 360 bursts per version: the rate's sd is about 0.0002 (measured over seeds).
        assert abs(rate - expected) < 0.001, rate
        assert vmr(version[:, 1]) > 3.0
    # Independent processes: the versions' per-interval errors are hardly correlated.
    assert abs(np.corrcoef(stable[:, 1], candidate[:, 1])[0, 1]) < 0.1

    plain = SyntheticMesh(scenario(duration=f"{hours}h"), seed=11, weights=Weights.candidate_at(50))
    stable, _ = per_interval(plain, hours * 3600.0, 30.0)
    assert 0.85 < vmr(stable[:, 1]) < 1.15  # Poisson: about 1


def test_shared_bursts_hit_both_versions_at_once_and_single_ones_only_theirs() -> None:
    shared = {**EACH_BURST, "versions": "shared"}
    mesh = SyntheticMesh(scenario(duration="50h", bursts=[shared]), seed=2, weights=Weights.candidate_at(50))
    stable, candidate = per_interval(mesh, 50 * 3600.0, 30.0)
    assert np.corrcoef(stable[:, 1], candidate[:, 1])[0, 1] > 0.6

    only = {**EACH_BURST, "versions": "candidate", "errorRate": 0.005, "latencyFactor": 4.0}
    mesh = SyntheticMesh(scenario(duration="50h", bursts=[only]), seed=2, weights=Weights.candidate_at(50))
    mesh.advance(50 * 3600.0)
    o = mesh.read(0.0, 50 * 3600.0)
    i = ISTIO_LATENCY_BUCKETS_MS.index(250.0)
    slow = [
        (v.requests - v.latency_ms.counts[i]) / v.requests for v in (o.stable, o.candidate) if v.latency_ms
    ]
    # Stable: 1% above its p99 of 250 ms. The candidate x4 for 10% of the time: 0.9% + 10% x P(L > 62.5).
    assert abs(slow[0] - 0.01) < 0.002
    assert slow[1] > 0.05
    assert abs(o.candidate.errors / o.candidate.requests - 0.005) < 0.001  # its error rate is unchanged


# --------------------------------------------------------------------------- shared changes


def test_a_shared_change_is_seen_by_both_versions_from_its_time_on() -> None:
    path = SCENARIOS / "shared-change.yaml"
    s = load_scenario_text(path.read_text(), str(path))
    mesh = SyntheticMesh(s, seed=4, weights=Weights.candidate_at(50))
    at = 13 * 60.0
    mesh.advance(at)
    before = mesh.read(0.0, at)
    mesh.advance(s.duration_s)
    after = mesh.read(at, s.duration_s)
    for counts, rate in ((before.stable, 0.005), (before.candidate, 0.005), (after.stable, 0.03),
                         (after.candidate, 0.03)):  # fmt: skip
        sd = math.sqrt(rate * (1 - rate) / counts.requests)
        assert abs(counts.errors / counts.requests - rate) < 4.5 * sd
    assert at in mesh.boundaries  # the chunk is split at the change, not averaged across it


# --------------------------------------------------------------------------- tails


def test_tail_bucket_shares_match_lognormal_times_pareto_draws() -> None:
    rng = np.random.default_rng(8)
    n = 2_000_000
    sigma = math.log(250 / 80) / 2.3263478740408408
    body = rng.lognormal(math.log(80), sigma, n)
    heavy = body * (1.0 + rng.pareto(1.5, n))  # numpy's pareto is Lomax: +1 is Pareto(min 1)
    edges = [0.0, *ISTIO_LATENCY_BUCKETS_MS]
    drawn = np.histogram(heavy, edges)[0] / n
    exact = bucket_shares(ISTIO_LATENCY_BUCKETS_MS, 80.0, sigma, Tail(1.0, 1.5))
    for p, q in zip(exact, drawn, strict=True):
        assert abs(p - q) < 5 * math.sqrt(max(p, 1e-7) * (1 - p) / n)


def test_a_heavy_tail_puts_the_far_quantiles_far_above_the_lognormals() -> None:
    doc = copy.deepcopy(BASE)
    doc["versions"]["candidate"] = {"latency": {"tail": {"share": 0.01, "alpha": 1.5}}}
    s = load_scenario(doc, "test")
    mesh = SyntheticMesh(s, seed=6, weights=Weights.candidate_at(50))
    mesh.advance(7200.0)
    o = mesh.read(0.0, 7200.0)

    def p9999(counts: tuple[float, ...]) -> float:
        total = counts[-1]
        return next(b for b, c in zip(ISTIO_LATENCY_BUCKETS_MS, counts, strict=True) if c >= 0.9999 * total)

    assert o.stable.latency_ms is not None and o.candidate.latency_ms is not None
    assert p9999(o.stable.latency_ms.counts) <= 1000.0  # lognormal p99.99: about 500 ms
    assert p9999(o.candidate.latency_ms.counts) >= 2500.0
    i = ISTIO_LATENCY_BUCKETS_MS.index(1000.0)
    above = [(v.requests - v.latency_ms.counts[i]) for v in (o.stable, o.candidate) if v.latency_ms]
    assert above[0] <= 2 and above[1] >= 20  # ~1e-7 vs ~3e-4 of 72,000 requests


# --------------------------------------------------------------------------- pods and Prometheus


def test_pods_keep_the_mean_and_differ_from_each_other() -> None:
    s = scenario(duration="20h", pods={"count": 5, "errorSpread": 1.0}, prometheus={"extrapolate": False})
    mesh = SyntheticMesh(s, seed=9, weights=Weights.candidate_at(50))
    counter = mesh._prom
    assert counter is not None
    m = counter._multipliers
    assert m.shape == (2, 5) and np.allclose(m.mean(axis=1), 1.0) and m.std() > 0.3
    stable, candidate = per_interval(mesh, 20 * 3600.0, 60.0)
    for version in (stable, candidate):
        rate = version[:, 1].sum() / version[:, 0].sum()
        assert abs(rate - 0.005) < 4.5 * math.sqrt(0.005 / version[:, 0].sum())
    # Each pod's own errors follow its own rate (stable's pods: series 0..4).
    requests = counter._true[:5] @ counter._to_shown[:, 1 + len(ISTIO_LATENCY_BUCKETS_MS) - 1]
    pod_rates = counter._true[:5, 0] / requests
    assert np.corrcoef(pod_rates, m[0])[0, 1] > 0.9


def test_prometheus_counts_are_fractional_and_close_to_the_exact_ones() -> None:
    exact = SyntheticMesh(scenario(duration="10h"), seed=3, weights=Weights.candidate_at(50))
    counted = SyntheticMesh(
        scenario(duration="10h", prometheus={"scrapeInterval": "15s", "jitter": "2s"}),
        seed=3,
        weights=Weights.candidate_at(50),
    )
    truth, _ = per_interval(exact, 36000.0, 60.0)
    seen, _ = per_interval(counted, 36000.0, 60.0)
    assert np.any(seen[:, 0] != np.round(seen[:, 0]))  # extrapolated: fractional
    # Unbiased over many windows (the same requests: the traffic stream is unchanged).
    assert abs(seen[:, 0].sum() / truth[:, 0].sum() - 1.0) < 0.02
    assert abs(seen[:, 1].sum() / truth[:, 1].sum() - 1.0) < 0.1
    # Each window sees about 45 s of samples scaled to 60 s: noisy, never wild.
    ratio = seen[:, 0] / truth[:, 0]
    assert ratio.min() > 0.7 and ratio.max() < 1.4

    raw = SyntheticMesh(
        scenario(duration="1h", prometheus={"extrapolate": False}), seed=3, weights=Weights.candidate_at(50)
    )
    seen, _ = per_interval(raw, 3600.0, 60.0)
    assert np.all(seen == np.round(seen))  # no extrapolation: whole increases


def test_scrape_phases_stay_within_the_jitter() -> None:
    s = scenario(duration="1h", pods={"count": 3}, prometheus={"scrapeInterval": "15s", "jitter": "2s"})
    mesh = SyntheticMesh(s, seed=1)
    mesh.advance(3600.0)
    counter = mesh._prom
    assert counter is not None
    phases = np.mod(counter._times[:, 0] + 7.5, 15.0) - 7.5
    assert np.all(np.abs(phases) <= 2.0) and len(set(phases.round(6))) == 6
    assert np.allclose(np.diff(counter._times[:, : counter._count.min()], axis=1), 15.0)


def test_counter_resets_give_neither_negative_nor_huge_counts() -> None:
    """Pods restart at a quarter of the scrapes: increase() corrects each drop as
    Prometheus does; what a restart loses is lost, nothing is invented."""
    doc = {"duration": "10h", "pods": {"count": 3}, "prometheus": {"counterResets": 0.25, "jitter": "1s"}}
    exact = SyntheticMesh(scenario(duration="10h"), seed=5, weights=Weights.candidate_at(50))
    counted = SyntheticMesh(scenario(**doc), seed=5, weights=Weights.candidate_at(50))
    truth, _ = per_interval(exact, 36000.0, 60.0)
    seen, _ = per_interval(counted, 36000.0, 60.0)
    assert np.all(seen >= 0.0)
    assert np.all(seen[:, 0] <= 1.5 * truth[:, 0])
    lost = 1.0 - seen[:, 0].sum() / truth[:, 0].sum()
    assert 0.02 < lost < 0.5  # restarts lose the requests before them, since the last scrape


def test_prometheus_counting_leaves_the_traffic_and_the_ground_truth_alone() -> None:
    plain = SyntheticMesh(scenario(), seed=12, weights=Weights.candidate_at(25))
    counted = SyntheticMesh(
        scenario(pods={"count": 4, "errorSpread": 0.8}, prometheus={"counterResets": 0.1}),
        seed=12,
        weights=Weights.candidate_at(25),
    )
    for mesh in (plain, counted):
        mesh.advance(1800.0)
        mesh.set_weights(Weights.candidate_at(60))
        mesh.advance(3600.0)
    for name in ("candidate_served_requests", "candidate_served_errors", "candidate_served_wrong"):
        assert getattr(plain, name) == getattr(counted, name) > 0
    assert counted.read(0.0, 3600.0) != plain.read(0.0, 3600.0)
