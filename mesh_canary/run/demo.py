"""`mesh-canary demo`: the whole loop on the embedded local mesh, twice.

A healthy candidate is promoted step by step; a degraded one (more errors, slower, less
accurate) is caught and snapped back to 100% stable. After the rollback the demo counts
the requests each model server actually received, to show that every new request reached
stable. Every process it starts is stopped before it returns.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from rich.console import Console

from mesh_canary.core.model import HookCall, Policy
from mesh_canary.core.policy import load_policy_text
from mesh_canary.localmesh.mesh import LoadSettings
from mesh_canary.present.console import render_state
from mesh_canary.present.view import check_document
from mesh_canary.run.dashboard_sources import MemoryStores, serving
from mesh_canary.run.stores import MemoryStateStore
from mesh_canary.run.wiring import drive, local_backend, prometheus_available

AFTER_ROLLBACK_S = 3.0  # how long to watch traffic after a rollback


def demo_policy() -> Policy:
    text = resources.files("mesh_canary").joinpath("demo-policy.yaml").read_text()
    return load_policy_text(text, source="demo-policy.yaml")


def run_one(
    policy: Policy,
    degraded: bool,
    rps: float,
    console: Console,
    live: bool,
    metrics_mode: str,
    store: MemoryStateStore | None = None,
    labels: str = "feedback",
) -> dict[str, Any]:
    label = "degraded" if degraded else "healthy"
    started = time.monotonic()
    with (
        local_backend(policy, degraded, rps, metrics_mode, seed=1, labels=labels, load=False) as (
            router,
            metrics,
            mesh,
        ),
        load_control(mesh) as control_url,
    ):
        # The load generator is started by the policy's duringStep hook, as a load tester
        # would be in a pipeline (docs/policy.md, "spec.hooks").
        hooked = replace(policy, hooks=replace(policy.hooks, during_step=(load_hook(control_url, rps),)))
        store = store or MemoryStateStore()
        result = drive(hooked, router, metrics, store, timeout_s=150, live=live, console=console)
        run: dict[str, Any] = {
            "candidate": label,
            "outcome": result.outcome,
            "reason": result.state.reason,
            "failedChecks": list(result.state.failed_checks),
            "steps": [s.to_dict() for s in result.state.steps],
            "checks": [check_document(c) for c in result.state.checks],
            "wallS": round(time.monotonic() - started, 1),
        }
        if result.outcome == "rolled_back":
            run["afterRollback"] = count_after_rollback(mesh, policy)
        if mesh.collector_url:
            run["collector"] = collector_summary(mesh.collector_url)
    if live:
        console.print(render_state(policy, result.state))
    return run


def collector_summary(url: str) -> dict[str, Any]:
    """What the collector joined, per version, and what still waits (its /unmatched report)."""
    import httpx

    report: dict[str, Any] = httpx.get(f"{url}/unmatched", params={"limit": 0}, timeout=5.0).json()
    return {k: report[k] for k in ("unlabelledPredictions", "unmatchedLabels")}


def load_hook(url: str, rps: float) -> HookCall:
    """The demo's duringStep hook: at every analysis, make sure the load runs at ``rps``."""
    return HookCall(
        name="loadgen", url=url, body=f'{{"rps": {rps:g}, "step": {{{{ step }}}}}}', timeout_s=5.0
    )


@contextlib.contextmanager
def load_control(mesh: Any) -> Iterator[str]:
    """A local endpoint that starts the mesh's load generator at the rate a POST asks for
    (once: later calls at the same rate change nothing). Yields its URL."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                rps = float(body["rps"])
                with lock:
                    gen = mesh.loadgen
                    if gen is None or not gen.running or gen.rate != rps:
                        mesh.start_load(LoadSettings(rate=rps))
                status = 200
            except (ValueError, KeyError, TypeError):
                status = 400
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/load"
    finally:
        server.shutdown()
        server.server_close()


def count_after_rollback(mesh: Any, policy: Policy) -> dict[str, Any]:
    """Count what each model server receives once traffic is back on stable."""
    stable, candidate = policy.stable.metrics_version, policy.candidate.metrics_version
    time.sleep(0.5)  # let requests that were in flight at the switch finish
    before = {v: mesh.requests_served(v) for v in (stable, candidate)}
    time.sleep(AFTER_ROLLBACK_S)
    after = {v: mesh.requests_served(v) for v in (stable, candidate)}
    new = {v: after[v] - before[v] for v in before}
    return {
        "windowS": AFTER_ROLLBACK_S,
        "stableReceived": new[stable],
        "candidateReceived": new[candidate],
        "allOnStable": new[candidate] == 0 and new[stable] > 0,
    }


def run_demo(
    rps: float = 100.0,
    live: bool = True,
    metrics_mode: str = "direct",
    dashboard: bool | None = None,
    labels: str = "feedback",
) -> dict[str, Any]:
    """Both rollouts; ``dashboard`` (default: with the live display) serves the live web
    page of both on a free local port while they run, and says where."""
    stores = {"healthy": MemoryStateStore(), "degraded": MemoryStateStore()}
    with contextlib.ExitStack() as stack:
        if live if dashboard is None else dashboard:
            url = stack.enter_context(serving([MemoryStores(stores, demo_policy())], ("127.0.0.1", 0)))
            Console(stderr=not live).print(
                f"Watch it live in a browser: [bold]{url}[/bold] (while the demo runs)"
            )
        return _run_demo(rps, live, metrics_mode, stores, labels)


def _run_demo(
    rps: float, live: bool, metrics_mode: str, stores: dict[str, MemoryStateStore], labels: str = "feedback"
) -> dict[str, Any]:
    console = Console(stderr=not live)
    policy = demo_policy()
    if live:
        via = (
            "a real Prometheus"
            if metrics_mode == "prometheus" or (metrics_mode == "auto" and prometheus_available())
            else "Envoy's and the model servers' /metrics directly"
        )
        console.print(
            f"Two model servers behind a real Envoy; load at {rps:.0f} req/s, started by the policy's "
            f"duringStep hook; metrics read from {via}."
        )
        if labels == "collector":
            console.print(
                "Labels: the model servers send KServe payload-logger CloudEvents to a prediction-label "
                "collector; the labels go to it, and accuracy comes from its /metrics."
            )
    started = time.monotonic()
    runs = []
    for degraded in (False, True):
        if live:
            kind = "a degraded candidate (errors, latency, accuracy)" if degraded else "a healthy candidate"
            console.rule(f"[bold]Rolling out {kind}")
        label = "degraded" if degraded else "healthy"
        runs.append(run_one(policy, degraded, rps, console, live, metrics_mode, stores[label], labels))
    healthy, degraded_run = runs
    ok = (
        healthy["outcome"] == "promoted"
        and degraded_run["outcome"] == "rolled_back"
        and degraded_run["afterRollback"]["allOnStable"]
    )
    report = {"ok": ok, "runs": runs, "wallS": round(time.monotonic() - started, 1)}
    if live:
        console.rule("[bold]Summary")
        console.print(f"healthy candidate:  {healthy['outcome']} in {healthy['wallS']}s")
        console.print(
            f"degraded candidate: {degraded_run['outcome']} in {degraded_run['wallS']}s: {degraded_run['reason']}"
        )
        if "afterRollback" in degraded_run:
            a = degraded_run["afterRollback"]
            console.print(
                f"after the rollback, over {a['windowS']:.0f}s: stable received {a['stableReceived']} requests, "
                f"the candidate {a['candidateReceived']}"
            )
        console.print(f"demo took {report['wallS']}s: " + ("[green]OK" if ok else "[red]NOT AS EXPECTED"))
    return report
