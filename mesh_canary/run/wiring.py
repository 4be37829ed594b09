"""Wiring: which adapters a command uses for a backend, and running one rollout with them."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from rich.console import Console

from mesh_canary.core import engine
from mesh_canary.core.engine import RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.errors import BadInput
from mesh_canary.metrics import MetricsTarget, metrics_for
from mesh_canary.notify import notifier_for_policy
from mesh_canary.protocols import MetricsSource, StateStore, TrafficRouter
from mesh_canary.routing import ROUTERS, RouterTarget, router_for_route, router_name_for
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.hooks import HttpHooks
from mesh_canary.run.runner import RolloutRunner, RunResult, outcome_of
from mesh_canary.run.stores import FileStateStore, MemoryStateStore

log = logging.getLogger("mesh_canary.drivers")  # the name users filter on; kept across the move

# The degraded candidate of `run --candidate degraded` and the demo: more errors, slower,
# and quietly less accurate, as bad models are.
DEGRADED = {"error_rate": 0.08, "extra_latency_ms": 40.0, "accuracy_drop": 0.2}


def prometheus_available() -> bool:
    return shutil.which("prometheus") is not None


@contextlib.contextmanager
def local_backend(
    policy: Policy,
    candidate_degraded: bool,
    rps: float,
    metrics_mode: str = "direct",
    seed: int = 1,
    initial: Weights = ALL_STABLE,
    labels: str = "feedback",
    candidate_degradation: Any = None,
    stable_degraded: bool = False,
    load: bool = True,
) -> Iterator[tuple[TrafficRouter, MetricsSource, Any]]:
    """The embedded local mesh for this policy: model servers behind a real Envoy, with load
    (and a third, healthy model server when the policy has a fallback).
    ``initial``: the weights Envoy starts with (a resumed rollout's, so no moment at 100/0).
    ``labels``: ``collector`` puts a prediction-label collector between the model servers and
    the metrics (see LocalMesh). ``candidate_degradation`` (a Degradation) overrides the
    degraded candidate. ``load`` False: no load until someone starts it (the demo's
    duringStep hook)."""
    from mesh_canary.localmesh.mesh import HEALTHY, Degradation, LoadSettings, LocalMesh

    candidate = Degradation(**DEGRADED) if candidate_degraded else HEALTHY  # type: ignore[arg-type]
    candidate = candidate_degradation or candidate
    stable = Degradation(**DEGRADED) if stable_degraded else HEALTHY  # type: ignore[arg-type]
    with LocalMesh(
        policy.stable.metrics_version,
        policy.candidate.metrics_version,
        candidate=candidate,
        stable=stable,
        fallback_version=local_fallback(policy),
        seed=seed,
        initial=initial,
        load=LoadSettings(rate=rps) if load else None,
        labels=labels,
    ) as mesh:
        if load:
            mesh.start_load()
        if metrics_mode == "prometheus" or (metrics_mode == "auto" and prometheus_available()):
            from mesh_canary.localmesh.prometheus import prometheus_for
            from mesh_canary.metrics.prometheus import PrometheusMetricsSource

            with prometheus_for(mesh) as prom:
                local_policy = replace(policy, metrics=replace(policy.metrics, profile="envoy"))
                yield mesh.router, PrometheusMetricsSource(local_policy, url=prom.url), mesh
        else:
            yield mesh.router, mesh.metrics_source(), mesh


def run_policy(
    policy: Policy,
    *,
    backend: str,
    prometheus_url: str | None = None,
    metrics_mode: str = "auto",
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    state_path: str | None = None,
    timeout_s: float | None = None,
    candidate_degraded: bool = False,
    rps: float = 100.0,
    live: bool = True,
    stable_degraded: bool = False,
) -> RunResult:
    """`mesh-canary run`: one rollout in this process, start to finish."""
    store: StateStore = FileStateStore(state_path) if state_path else MemoryStateStore()
    if ROUTERS[backend].kind is None:
        degraded = (candidate_degraded, stable_degraded)
        return _run_local(policy, store, metrics_mode, timeout_s, degraded, rps, live)
    if backend != router_name_for(policy):
        raise LocalInputError(
            f"--backend {backend} writes {ROUTERS[backend].kind}s, but the policy names {policy.route}: "
            f"use --backend {router_name_for(policy)} (or leave --backend out)"
        )
    router, metrics = cluster_backend(policy, kubeconfig, kube_context, prometheus_url)
    return drive(policy, router, metrics, store, timeout_s, live)


class LocalInputError(BadInput, ValueError):
    """The policy cannot run on the backend asked for, e.g. the local mesh (bad input: exit 2,
    nothing started)."""


def _run_local(
    policy: Policy,
    store: StateStore,
    metrics_mode: str,
    timeout_s: float | None,
    degraded: tuple[bool, bool],  # the candidate's, stable's model server
    rps: float,
    live: bool,
) -> RunResult:
    """`run --backend local`. The mesh lives only as long as this process: a saved rollout
    that already finished is reported without starting one; an unfinished one resumes on a
    fresh mesh with its weights restored and its step's window restarted."""
    from mesh_canary.localmesh.mesh import check_labels

    try:
        check_labels(policy.stable.metrics_version, policy.candidate.metrics_version, local_fallback(policy))
    except ValueError as e:
        raise LocalInputError(f"--backend local cannot use this policy: {e}") from None
    saved = saved_rollout(policy, store)
    if saved is not None and saved.terminal:
        say(finished_sentence(saved))
        return RunResult(outcome_of(saved) or saved.phase.value.lower(), saved)
    restore = resume_weights(saved, store) if saved is not None else ALL_STABLE
    with local_backend(
        policy, degraded[0], rps, metrics_mode, initial=restore, stable_degraded=degraded[1]
    ) as (
        router,
        metrics,
        mesh,
    ):
        if saved is not None:
            resume_on_new_mesh(saved, restore, metrics, store)
        result = drive(policy, router, metrics, store, timeout_s, live)
    if mesh.weights_at_stop is not None:
        w = mesh.weights_at_stop
        on = f"/{w.fallback}" if mesh.fallback_version else ""
        say(
            f"local mesh stopped; Envoy held {w.stable}/{w.candidate}{on} (stable/candidate{'/fallback' if on else ''}) to the end"
        )
    return result


def local_fallback(policy: Policy) -> str | None:
    """The local mesh's name for the policy's fallback (its third model server): the
    destination's subset, else the first label of its host."""
    d = policy.fallback
    return None if d is None else d.subset or d.host.split(".")[0]


def say(message: str) -> None:
    """One line for the person at the terminal (stderr: stdout may be -o json)."""
    print(message, file=sys.stderr, flush=True)


def saved_rollout(policy: Policy, store: StateStore) -> RolloutState | None:
    """The saved rollout that a runner would resume for this policy, else None (nothing
    saved, or saved for another policy: the runner then starts over)."""
    saved = store.load()
    if saved is None:
        return None
    state = RolloutState.from_dict(saved)
    return state if state.policy_fingerprint == engine.policy_fingerprint(policy) else None


def finished_sentence(state: RolloutState) -> str:
    outcome = outcome_of(state) or state.phase.value.lower()
    what = {"promoted": "promoted", "rolled_back": "rolled back"}.get(outcome, outcome.replace("_", " "))
    when = f" at {_utc(state.finished_at)}" if state.finished_at is not None else ""
    why = f" ({state.reason})" if state.reason else ""
    return (
        f"rollout {state.name} already finished: {what}{when}{why}. Nothing was started or changed; "
        "remove the state file to start a new rollout."
    )


def _utc(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def resume_weights(state: RolloutState, store: StateStore) -> Weights:
    """What the new mesh must hold: the saved weights, or 100% stable if a rollback was
    still pending when the old process died (its intent is never undone)."""
    raw = store.load() or {}
    return ALL_STABLE if raw.get("rollbackPending") else state.weights


def resume_on_new_mesh(
    state: RolloutState, restored: Weights, metrics: MetricsSource, store: StateStore
) -> None:
    """The old mesh, its traffic and its counters died with the old process: say so, and
    restart the current step's metrics window on the new mesh (its counters start at zero,
    so the old window's start would judge the new mesh on a window that is mostly empty,
    and a healthy model could look like "no data")."""
    step = state.step_index + 1
    pending = " (a rollback was pending)" if restored != state.weights else ""
    say(
        f"resuming on a new local mesh: restoring {restored.stable}/{restored.candidate}{pending} and "
        f"restarting step {step}'s window (the old mesh, its traffic and its counters are gone)"
    )
    from mesh_canary.metrics.local import LocalMetricsSource

    now = SystemClock().now()
    if isinstance(metrics, LocalMetricsSource):
        # A snapshot at the window's start, so the first judged window is exactly [now, tick].
        metrics.read(now, now)
    # Evidence of completed steps (earlier windows) stays: it was measured, and still holds.
    store.save(replace(state, step_started_at=now, last_data_at=now, last_tick_at=None).to_dict())


def drive(
    policy: Policy,
    router: TrafficRouter,
    metrics: MetricsSource,
    store: StateStore,
    timeout_s: float | None,
    live: bool,
    console: Console | None = None,
) -> RunResult:
    """Run the rollout with a live display; the first Ctrl-C rolls back to stable, a second
    one quits (right after a write in progress and its save, never in the middle)."""
    from mesh_canary.present.console import LiveProgress
    from mesh_canary.registry.announce import start_registry_run

    clock = SystemClock()
    # The model registry (if the policy names versions in it) is resolved before anything is
    # written, and told the outcome afterwards, in the background like a webhook.
    registry = start_registry_run(policy, store)
    if registry is not None:
        store = registry.store
    notifier = notifier_for_policy(
        policy.notifications, namespace=policy.namespace, extra=[registry.announcer] if registry else []
    )
    with LiveProgress(policy, console, enabled=live) as progress:
        runner = RolloutRunner(
            policy,
            router,
            metrics,
            store,
            notifier,
            clock,
            on_update=progress.update,
            hooks=HttpHooks(policy.hooks),
        )

        def abort() -> None:
            runner.request("abort")
            clock.wake()

        try:
            with interrupts_roll_back(abort, on_quit=runner.request_quit):
                return runner.run(timeout_s)
        except KeyboardInterrupt:
            # A second Ctrl-C that waited for a write: report what that write finished.
            state = runner.state
            outcome = outcome_of(state) if state is not None else None
            if state is None or outcome is None:
                raise
            return RunResult(outcome, state)
        finally:
            notifier.close()
            if registry is not None:
                registry.announcer.wait(registry.announcer.budget_s)  # bounded, after every write


@contextlib.contextmanager
def interrupts_roll_back(
    on_interrupt: Callable[[], None], on_quit: Callable[[], bool] | None = None
) -> Iterator[None]:
    """While inside: the first Ctrl-C / SIGTERM rolls back to stable (safety first), a
    second one quits at once, unless ``on_quit()`` says a write is in progress: then the
    runner quits right after it (a rollback written but not saved would be undone by a
    rerun). The previous handlers come back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    count = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        if count > 1:
            if on_quit is not None and on_quit():
                print("quitting after the write in progress", file=sys.stderr)
                return
            raise KeyboardInterrupt
        print(
            "interrupted: rolling back to 100% stable (press Ctrl-C again to quit at once)", file=sys.stderr
        )
        on_interrupt()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cluster_backend(
    policy: Policy, kubeconfig: str | None, context: str | None, prometheus_url: str | None
) -> tuple[TrafficRouter, MetricsSource]:
    """A cluster: the policy's route (VirtualService, HTTPRoute) through the Kubernetes API,
    metrics from Prometheus."""
    from mesh_canary.kube.rollouts import api_client

    router = router_for_route(policy, RouterTarget(api_client=api_client(kubeconfig, context)))
    return router, metrics_for("prometheus", policy, MetricsTarget(url=prometheus_url))
