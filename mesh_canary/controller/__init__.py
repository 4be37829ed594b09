"""The in-cluster controller: `mesh-canary controller`.

It watches ModelRollout resources (one namespace or all) and runs each one's rollout at
its own ``analysis.interval``, many at once:

- an informer thread lists the resources, then watches from the list's
  resourceVersion (re-listing on 410 Gone, reconnecting with backoff on errors) and keeps
  one `RolloutHandler` per resource;
- a scheduler thread keeps a heap of next-due times and hands due rollouts to
  ``workers`` worker threads, never two ticks of one rollout at once; a reconcile that has
  run ``slow_after_s`` stops holding its worker (up to ``max_workers`` threads), so slow
  rollouts cannot starve the others, and one running ``stuck_after_s`` fails ``/livez``;
- each handler drives a `RolloutRunner` (the same driver as `mesh-canary run`) with the
  Istio router, the Prometheus metrics source, the status store and a notifier fanning
  out to Kubernetes Events, the log and the policy's webhooks; the state is saved in the
  resource's status after every tick, so a restarted controller resumes exactly, without
  re-writing any weight;
- with ``--leader-elect`` only the replica holding the ``coordination.k8s.io`` Lease
  reconciles (the official client's `kubernetes.leaderelection` decides who holds it; this
  module adds a loop that can stop and releases the Lease on shutdown);
- ``/livez``, ``/readyz`` and ``/metrics`` on ``--metrics-addr``.

People's orders arrive as annotations on the resource (see `mesh_canary.kube.status.COMMAND_ANNOTATIONS`).
A changed spec restarts the rollout (traffic goes back to stable first); a deleted
ModelRollout leaves its traffic on stable (a finalizer holds the deletion until it does);
an invalid spec touches nothing and says why in the ``PolicyValid`` condition. So does a
spec naming a VirtualService in another namespace or a Prometheus the controller was not
configured with (`_admit`): a spec never chooses where the controller writes or connects.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import heapq
import importlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from mesh_canary.core import engine
from mesh_canary.core.durations import format_duration
from mesh_canary.core.engine import Command, Phase, RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, Problem, load_policy, resource_document
from mesh_canary.core.verdicts import Judge
from mesh_canary.core.weights import ALL_STABLE
from mesh_canary.errors import CouldNotWork
from mesh_canary.kube.events import KubeEventNotifier
from mesh_canary.kube.names import API_VERSION, GROUP, KIND, PLURAL, VERSION
from mesh_canary.kube.rollouts import read_secret_key
from mesh_canary.kube.status import (
    COMMAND_ANNOTATIONS,
    FINALIZER,
    KubeStatusStore,
    StatusWriteError,
    history_entry,
    rollback_category,
    saved_state,
)
from mesh_canary.metrics import MetricsTarget, metrics_for
from mesh_canary.notify import BackgroundNotifier, notifier_for_policy
from mesh_canary.protocols import Announcement, Clock, MetricsSource, Notifier, TrafficRouter
from mesh_canary.redact import redact, redact_url, redact_value, register_secret
from mesh_canary.routing import RouterTarget, router_for
from mesh_canary.run.clock import SystemClock
from mesh_canary.run.policy_loading import load_checked_policy
from mesh_canary.run.runner import RolloutRunner

log = logging.getLogger("mesh_canary.controller")

Key = tuple[str, str]  # (namespace, name)
BackendFactory = Callable[[Policy], tuple[TrafficRouter, MetricsSource]]

PHASES = ("Pending", "Invalid", *(p.value for p in Phase))
DEFAULT_LEASE_NAME = "mesh-canary-controller"
# The policy's default spec.metrics.address: the one Prometheus allowed when nothing is configured.
DEFAULT_METRICS_ADDRESS = "http://prometheus.istio-system:9090"
# A reconcile is slow after this long (it stops holding a worker), stuck after this long
# (/livez fails): far past every outside call's own total deadline (metrics.timeout, the
# API request timeout, the runner's write deadline).
DEFAULT_SLOW_AFTER_S = 5.0
DEFAULT_STUCK_AFTER_S = 300.0


class ControllerError(CouldNotWork, RuntimeError):
    pass


def _watch_module() -> Any:
    return importlib.import_module("kubernetes.watch")


# --------------------------------------------------------------------------- metrics


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
        for state in ("normal", "slow", "stuck"):
            self.in_flight.labels(state).set(0)


# --------------------------------------------------------------------------- leader election


class LeaderElector:
    """Holds a coordination.k8s.io Lease while it can; calls back on gaining and losing it.

    The acquire/renew rules are the official client's (`LeaderElection.try_acquire_or_renew`
    over its `LeaseLock`); its own `run()` cannot be stopped and never releases the Lease,
    so this loop replaces it: it stops on request and then clears the holder, so that
    another replica takes over within one retry period instead of a whole lease duration.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        name: str,
        namespace: str,
        identity: str,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
    ) -> None:
        # The module is untyped: reach it through Any.
        election_mod: Any = importlib.import_module("kubernetes.leaderelection.leaderelection")
        config_mod: Any = importlib.import_module("kubernetes.leaderelection.electionconfig")
        lock_mod: Any = importlib.import_module("kubernetes.leaderelection.resourcelock.leaselock")

        if not lease_duration_s > renew_deadline_s > retry_period_s > 0:
            raise ValueError("leader election needs lease duration > renew deadline > retry period > 0")
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.leading = False
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        lock = lock_mod.LeaseLock(name, namespace, identity)
        lock.api_instance = self._api  # the module builds a client from the default config otherwise
        # Config validates with sys.exit and wants whole seconds >= 1; the timings it checks
        # are only used by the module's own loop, which this class replaces.
        config = config_mod.Config(lock, int(lease_duration_s), 2, 1, on_started, on_stopped)
        self._election: Any = election_mod.LeaderElection(config)
        logging.getLogger("leaderelection").setLevel(logging.WARNING)  # it logs every retry at INFO

    def run(self, stop: threading.Event) -> None:
        last_renew = 0.0
        while not stop.is_set():
            try:
                ok = bool(self._election.try_acquire_or_renew())
            except Exception as e:  # the API server unreachable: treated as a failed renew
                log.warning("leader election: could not reach the Lease: %s", e)
                ok = False
            now = time.monotonic()
            if ok:
                last_renew = now
                if not self.leading:
                    self.leading = True
                    log.info(
                        "leader election: %s now holds Lease %s/%s", self.identity, self.namespace, self.name
                    )
                    self.on_started()
            elif self.leading and now - last_renew >= self.renew_deadline_s:
                self.leading = False
                log.warning("leader election: lost Lease %s/%s", self.namespace, self.name)
                self.on_stopped()
            stop.wait(self.retry_period_s)
        if self.leading:
            self.leading = False
            self.on_stopped()
            self.release()

    def release(self) -> None:
        """Clear the holder so that another replica need not wait for the lease to expire."""
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self._api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        except Exception as e:  # best effort: the lease expires anyway
            log.warning("leader election: could not release Lease %s/%s: %s", self.namespace, self.name, e)


# --------------------------------------------------------------------------- probes and metrics endpoint


DEFAULT_BIND_ADDRESS = "127.0.0.1"


def parse_addr(addr: str, bind_address: str = DEFAULT_BIND_ADDRESS) -> tuple[str, int]:
    """``:8080`` -> (bind_address, 8080); ``127.0.0.1:0`` -> ("127.0.0.1", 0).

    Loopback by default: the probes and metrics are not for the whole network unless the
    operator says so (the Deployment passes ``--bind-address 0.0.0.0`` for the kubelet).
    """
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics-addr {addr!r} is not HOST:PORT or :PORT")
    return host.strip("[]") or bind_address, int(port)


class _HealthServer:
    def __init__(self, controller: Controller, addr: str, bind_address: str = DEFAULT_BIND_ADDRESS) -> None:
        host, port = parse_addr(addr, bind_address)
        ctl = controller

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                if path == "/livez":
                    ok, text = ctl.liveness()
                    self._send(200 if ok else 503, text.encode(), "text/plain")
                elif path == "/readyz":
                    ok, why = ctl.readiness()
                    self._send(200 if ok else 503, why.encode(), "text/plain")
                elif path == "/metrics":
                    ctl.refresh_gauges()
                    self._send(200, generate_latest(ctl.metrics.registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- metrics addresses


@dataclass(frozen=True)
class MetricsAddress:
    """One Prometheus the controller may query, from its own configuration (never from a spec)."""

    url: str  # as configured, credentials included: what is queried
    key: tuple[str, str, int, str]  # (scheme, host, port, path): what a spec's address is matched on

    @classmethod
    def parse(cls, url: str) -> MetricsAddress:
        key = address_key(url)
        if key is None:
            raise ValueError(
                f"metrics address {redact_url(url)!r} is not an http(s) URL with a host and no query string"
            )
        parts = urlsplit(url.strip())
        # Never in a log, status, Event or payload (a token alone sits where the user would).
        register_secret(parts.password if parts.password is not None else parts.username)
        return cls(url.strip().rstrip("/"), key)

    def __str__(self) -> str:
        return redact_url(self.url)


def address_key(url: str) -> tuple[str, str, int, str] | None:
    """What identifies a Prometheus: scheme, host, port, path; None for anything else (a query string...)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return None
    if "?" in url or "#" in url:
        return None
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), parts.path.rstrip("/")


def register_url_secrets(url: str) -> None:
    """A webhook URL read from a Secret: the whole URL, its password, path and query values are secret."""
    register_secret(url)
    try:
        parts = urlsplit(url)
        register_secret(parts.password)
        register_secret(parts.path.rstrip("/"))
        for _, value in parse_qsl(parts.query):
            register_secret(value)
    except ValueError:
        pass


def describe_error(e: BaseException) -> str:
    """One line for a status, an Event or a notification: never an HTTP response body."""
    if isinstance(e, ApiException):
        # str(ApiException) carries the response headers and body.
        return f"the Kubernetes API answered HTTP {e.status} ({e.reason})"
    text = str(e)
    seen: set[int] = set()
    cause = e.__cause__ or e.__context__
    while cause is not None and id(cause) not in seen:
        # Our own errors may quote an API error's body (a proxy's HTML page, a webhook's text).
        seen.add(id(cause))
        body = cause.body if isinstance(cause, ApiException) else None
        if body:
            shown = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            if shown.strip():
                text = text.replace(shown.strip(), "(response body not shown)")
        cause = cause.__cause__ or cause.__context__
    line = redact(text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    return line if len(line) <= 300 else line[:297] + "..."


class _RedactingNotifier:
    """Every announcement of a rollout (Events, webhooks, the log) without a secret in it."""

    def __init__(self, inner: Notifier) -> None:
        self.inner = inner

    def notify(self, announcement: Announcement) -> None:
        self.inner.notify(
            dataclasses.replace(
                announcement,
                message=redact(announcement.message),
                details=redact_value(announcement.details),
            )
        )


# --------------------------------------------------------------------------- one rollout


@dataclass
class _InFlight:
    handler: RolloutHandler
    started: float  # time.monotonic()


@dataclass
class RolloutHandler:
    """What the controller keeps for one ModelRollout."""

    key: Key
    obj: dict[str, Any]
    uid: str | None = None
    runner: RolloutRunner | None = None
    fingerprint: str = ""
    store: KubeStatusStore | None = None
    events: KubeEventNotifier | None = None
    notifier: BackgroundNotifier | None = None
    deleted: bool = False
    removed: bool = False
    invalid_reported: int | None = None  # generation whose InvalidPolicy Event was sent
    last_error: str = ""
    # scheduling, guarded by the controller's lock
    running: bool = False
    rerun: bool = False
    token: int = 0
    due: float | None = None
    phase: str = "Pending"
    finalized: bool = False  # traffic already restored after a deletion

    @property
    def ref(self) -> str:
        return f"{self.key[0]}/{self.key[1]}"


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    m = obj.get("metadata")
    return dict(m) if isinstance(m, Mapping) else {}


def _command_values(obj: Mapping[str, Any]) -> dict[str, str]:
    ann = _meta(obj).get("annotations") or {}
    return {word: str(ann[key]) for word, key in COMMAND_ANNOTATIONS.items() if key in ann}


def _read_secret_url(client: Any, namespace: str, name: str, key: str) -> str | None:
    """A webhook URL from a Secret, registered as secret before anything can print it."""
    value = read_secret_key(client, namespace, name, key)
    if value:
        register_url_secrets(value)
    return value


def _policy_from_spec(obj: Mapping[str, Any] | None, spec: Any) -> Policy | None:
    if obj is None or not isinstance(spec, Mapping):
        return None
    meta = _meta(obj)
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "spec": copy.deepcopy(dict(spec)),
    }
    try:
        return load_policy(doc)
    except PolicyError:
        return None


# --------------------------------------------------------------------------- the controller


class Controller:
    """Reconciles every ModelRollout it can see. `start()`, then `stop()` (or `run()` until SIGTERM)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        namespace: str | Sequence[str] | None = None,
        backend: BackendFactory | None = None,
        prometheus_url: str | None = None,
        judge: Judge | None = None,
        clock: Clock | None = None,
        workers: int = 4,
        max_workers: int | None = None,
        slow_after_s: float = DEFAULT_SLOW_AFTER_S,
        stuck_after_s: float = DEFAULT_STUCK_AFTER_S,
        metrics_addr: str | None = None,
        bind_address: str = DEFAULT_BIND_ADDRESS,
        allowed_metrics_addresses: Sequence[str] | None = None,
        allow_cross_namespace: bool = False,
        leader_elect: bool = False,
        lease_name: str = DEFAULT_LEASE_NAME,
        lease_namespace: str | None = None,
        identity: str | None = None,
        lease_duration_s: int = 15,
        renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0,
        watch_timeout_s: int = 30,
        error_retry_s: float = 5.0,
        request_timeout_s: float = 10.0,
    ) -> None:
        self.api = api_client
        # One namespace, several (a namespaced install: a Role in each), or None: all of them.
        names = [namespace] if isinstance(namespace, str) else list(namespace or [])
        self.namespaces: list[str] = list(
            dict.fromkeys(n.strip() for ns in names for n in ns.split(",") if n.strip())
        )
        self.namespace = self.namespaces[0] if self.namespaces else None
        self.backend = backend or self._istio_backend
        self.prometheus_url = prometheus_url
        self.judge = judge
        self.clock: Clock = clock or SystemClock()
        if workers < 1 or not 0 < slow_after_s < stuck_after_s:
            raise ValueError("the controller needs workers >= 1 and 0 < slow-after < stuck-after")
        self.workers = workers
        # Slow reconciles stop counting against `workers`, up to this many threads in all.
        self.max_workers = max(max_workers if max_workers is not None else 4 * workers, workers)
        self.slow_after_s = slow_after_s
        self.stuck_after_s = stuck_after_s
        self.allow_cross_namespace = allow_cross_namespace
        # What spec.metrics.address may name: the controller's own configuration, never the spec's.
        # --prometheus (else the policy's default address) first: it is also what a spec
        # that names no address gets, unless only --allow-metrics-address entries were given.
        configured = [*([prometheus_url] if prometheus_url else []), *(allowed_metrics_addresses or [])]
        self.allowed_metrics = [MetricsAddress.parse(a) for a in configured or [DEFAULT_METRICS_ADDRESS]]
        self.leader_elect = leader_elect
        # Unique per process, like client-go's: a restarted container must not pass for the old one.
        self.identity = (
            identity or f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        )
        self.watch_timeout_s = watch_timeout_s
        self.error_retry_s = error_retry_s
        self.request_timeout_s = request_timeout_s
        self.metrics = ControllerMetrics()
        self.handlers: dict[Key, RolloutHandler] = {}
        self.synced = threading.Event()
        self._synced_namespaces: set[str | None] = set()
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int, Key]] = []
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._leading = not leader_elect
        self._inflight: dict[int, _InFlight] = {}  # by id(handler): reconciles running now (_cond)
        self._threads: list[threading.Thread] = []
        self._watches: dict[str | None, Any] = {}  # the kubernetes.watch.Watch streaming now, per namespace
        self._health = _HealthServer(self, metrics_addr, bind_address) if metrics_addr else None
        self._elector: LeaderElector | None = None
        if leader_elect:
            self._elector = LeaderElector(
                api_client,
                lease_name,
                lease_namespace or os.environ.get("POD_NAMESPACE") or self.namespace or "default",
                self.identity,
                self._started_leading,
                self._stopped_leading,
                lease_duration_s=lease_duration_s,
                renew_deadline_s=renew_deadline_s,
                retry_period_s=retry_period_s,
            )
        self.metrics.leader.set(1 if self._leading else 0)

    # -- life cycle ------------------------------------------------------------------

    @property
    def metrics_port(self) -> int | None:
        return self._health.port if self._health else None

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> Controller:
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"informer {ns or '*'}", functools.partial(self._informer_loop, ns))
            for ns in ([*self.namespaces] if self.namespaces else [None])
        ]
        targets.append(("scheduler", self._scheduler_loop))
        if self._elector is not None:
            elector = self._elector
            targets.append(("leader-election", lambda: elector.run(self._stopping)))
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self._health is not None:
            self._health.start()
        log.info(
            "controller started",
            extra={
                "namespace": ",".join(self.namespaces) or "*",
                "leaderElect": self.leader_elect,
                "identity": self.identity,
            },
        )
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish in-flight ticks, release the Lease, stop every thread."""
        if self._stopping.is_set():
            return
        log.info("controller stopping: finishing in-flight ticks")
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for w in list(self._watches.values()):
            w.stop()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(min(deadline - time.monotonic(), 0.5))
            left = sorted(f.handler.ref for f in self._inflight.values())
        if left:
            # Daemon threads: a reconcile stuck on an outside call cannot keep the process alive.
            log.warning("controller stopping with reconciles still in flight: %s", ", ".join(left))
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        for h in list(self.handlers.values()):
            self._drop_runner(h)
        if self._health is not None:
            self._health.stop()
        log.info("controller stopped")

    def request_stop(self) -> None:
        """Safe from a signal handler: `run()` returns after a clean `stop()`."""
        self._stop_requested.set()

    def run(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly (call from the main thread)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self._stop_requested.set())
        self.start()
        try:
            while not self._stop_requested.wait(1.0):
                if not self.alive():
                    raise ControllerError(
                        "a controller thread died; exiting so that the Deployment restarts it"
                    )
        finally:
            # Inside the pod's 30 s grace period, even with a wedged reconcile in flight.
            self.stop(timeout_s=20.0)

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) or self._stopping.is_set()

    def stuck(self) -> list[tuple[str, float]]:
        """Reconciles running longer than ``stuck_after_s`` (far past every outside call's deadline)."""
        now = time.monotonic()
        with self._cond:
            running = [(f.handler.ref, now - f.started) for f in self._inflight.values()]
        return sorted((ref, age) for ref, age in running if age >= self.stuck_after_s)

    def liveness(self) -> tuple[bool, str]:
        """`/livez`: a dead thread or a wedged reconcile fails it, so that Kubernetes restarts us."""
        if not self.alive():
            return False, "a controller thread died"
        stuck = self.stuck()
        if stuck:
            ref, age = stuck[0]
            return False, (
                f"{len(stuck)} reconcile(s) stuck, e.g. {ref} for {age:.0f}s "
                f"(limit {format_duration(self.stuck_after_s)})"
            )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self.synced.is_set():
            return False, "the ModelRollout informer has not listed yet"
        if self.leader_elect and not self._leading:
            return False, "not the leader: standing by"
        return True, "ok"

    # -- leadership --------------------------------------------------------------------

    def _started_leading(self) -> None:
        with self._cond:
            self._leading = True
            self.metrics.leader.set(1)
            for h in self.handlers.values():
                self._schedule_locked(h, self.clock.now())
            self._cond.notify_all()

    def _stopped_leading(self) -> None:
        with self._cond:
            self._leading = False
            self.metrics.leader.set(0)
            # In-flight ticks finish; no new one starts (the scheduler checks `_leading`). Not
            # forever: a wedged one is what /livez reports, and it must not hold this thread.
            deadline = time.monotonic() + self.stuck_after_s
            while any(h.running for h in self.handlers.values()) and time.monotonic() < deadline:
                self._cond.wait(0.2)
            handlers = list(self.handlers.values())
        for h in handlers:
            # Whoever leads next resumes from the status; our copy may be stale by then.
            self._drop_runner(h)

    # -- informer ----------------------------------------------------------------------

    def _list_fn(self, namespace: str | None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        if namespace:
            return self._custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, PLURAL)
        return self._custom.list_cluster_custom_object, (GROUP, VERSION, PLURAL)

    def _informer_loop(self, namespace: str | None = None) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                rv = self._relist(namespace)
                backoff = 0.5
                while not self._stopping.is_set():
                    rv = self._watch_from(rv, namespace)
            except ApiException as e:
                if e.status == 410:
                    log.info("watch expired (410 Gone): listing again")
                    continue
                log.warning(
                    "ModelRollout watch failed: HTTP %s %s; retrying in %.1fs", e.status, e.reason, backoff
                )
            except Exception as e:
                if self._stopping.is_set():
                    return
                log.warning("ModelRollout watch failed: %s; retrying in %.1fs", e, backoff)
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _relist(self, namespace: str | None = None) -> str:
        fn, args = self._list_fn(namespace)
        result: Any = fn(*args, _request_timeout=self.request_timeout_s)
        items = [i for i in result.get("items", []) if isinstance(i, dict)]
        seen: set[Key] = set()
        for obj in items:
            obj.setdefault("apiVersion", API_VERSION)
            obj.setdefault("kind", KIND)
            seen.add(self._upsert(obj))
        with self._cond:
            gone = [
                h
                for k, h in self.handlers.items()
                if k not in seen and not h.deleted and (namespace is None or k[0] == namespace)
            ]
        for h in gone:
            self._deleted(h.obj)
        with self._cond:
            self._synced_namespaces.add(namespace)
            if len(self._synced_namespaces) >= max(len(self.namespaces), 1):
                self.synced.set()
        return str((result.get("metadata") or {}).get("resourceVersion") or "")

    def _watch_from(self, rv: str, namespace: str | None = None) -> str:
        fn, args = self._list_fn(namespace)
        w: Any = _watch_module().Watch()
        self._watches[namespace] = w
        kwargs: dict[str, Any] = {
            "timeout_seconds": self.watch_timeout_s,
            "allow_watch_bookmarks": True,
            "_request_timeout": self.watch_timeout_s + 10,
        }
        if rv:
            kwargs["resource_version"] = rv
        for event in w.stream(fn, *args, **kwargs):
            if self._stopping.is_set():
                w.stop()
                break
            kind, obj = event.get("type"), event.get("raw_object")
            if not isinstance(obj, dict):
                continue
            rv = str(_meta(obj).get("resourceVersion") or rv)
            if kind in ("ADDED", "MODIFIED"):
                self._upsert(obj)
            elif kind == "DELETED":
                self._deleted(obj)
        return rv

    def _upsert(self, obj: dict[str, Any]) -> Key:
        meta = _meta(obj)
        key: Key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._cond:
            h = self.handlers.get(key)
            if h is None:
                h = RolloutHandler(
                    key=key, obj=obj, phase=str((obj.get("status") or {}).get("phase") or "Pending")
                )
                self.handlers[key] = h
                kick = True
            else:
                old = _meta(h.obj)
                kick = (
                    h.deleted
                    or old.get("generation") != meta.get("generation")
                    or old.get("uid") != meta.get("uid")
                    or _command_values(h.obj) != _command_values(obj)
                    or (bool(meta.get("deletionTimestamp")) and not old.get("deletionTimestamp"))
                )
                h.obj = obj
                h.deleted = False
                if h.runner is None:  # a follower's view of the phase, for the rollouts gauge
                    h.phase = str((obj.get("status") or {}).get("phase") or h.phase)
            if kick:
                self._kick_locked(h)
        return key

    def _deleted(self, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key: Key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._cond:
            h = self.handlers.get(key)
            if h is None:
                return
            h.obj = obj
            h.deleted = True
            self._kick_locked(h)

    # -- scheduler ---------------------------------------------------------------------

    def _schedule_locked(self, h: RolloutHandler, due: float) -> None:
        h.token += 1
        h.due = due
        heapq.heappush(self._heap, (due, next(self._seq), h.token, h.key))
        self._cond.notify_all()

    def _kick_locked(self, h: RolloutHandler) -> None:
        if h.running:
            h.rerun = True
        else:
            self._schedule_locked(h, self.clock.now())

    def _free_worker_locked(self, mono: float) -> float | None:
        """0 if a due rollout may start now; else seconds until a busy worker turns slow (None: never).

        ``workers`` reconciles run at once; one that has run ``slow_after_s`` (a stuck outside
        call) stops counting, so slow rollouts cannot hold every worker: a due rollout waits
        behind another rollout's slow reconcile at most ``slow_after_s``. ``max_workers``
        caps the threads in all (then /livez reports the stuck ones).
        """
        if len(self._inflight) >= self.max_workers:
            return None
        ages = [mono - f.started for f in self._inflight.values()]
        busy = [age for age in ages if age < self.slow_after_s]
        if len(busy) < self.workers:
            return 0.0
        return self.slow_after_s - max(busy)

    def _scheduler_loop(self) -> None:
        with self._cond:
            while not self._stopping.is_set():
                if not self._leading:
                    self._cond.wait(0.5)
                    continue
                now = self.clock.now()
                wait = 1.0
                while self._heap and self._heap[0][0] <= now:
                    free_in = self._free_worker_locked(time.monotonic())
                    if free_in != 0.0:
                        # Due but no worker: wake when one turns slow, or when one finishes.
                        wait = min(wait, free_in) if free_in is not None else wait
                        break
                    _, _, token, key = heapq.heappop(self._heap)
                    h = self.handlers.get(key)
                    if h is None or h.removed or token != h.token:
                        continue
                    self._dispatch_locked(h)
                else:
                    if self._heap:
                        wait = min(self._heap[0][0] - now, 1.0)
                self._cond.wait(max(wait, 0.01))

    def _dispatch_locked(self, h: RolloutHandler) -> None:
        h.running, h.due = True, None
        # A daemon thread per reconcile, counted in `_inflight`: one stuck on an outside call
        # can neither hold a pool slot forever nor keep a stopping process alive.
        thread = threading.Thread(target=self._work, args=(h,), name=f"rollout {h.ref}", daemon=True)
        self._inflight[id(h)] = _InFlight(h, time.monotonic())
        thread.start()

    def _work(self, h: RolloutHandler) -> None:
        started = time.monotonic()
        next_due: float | None = None
        failed = False
        try:
            next_due = self._reconcile(h)
            h.last_error = ""
            self._report_reconcile(h, None)
        except Exception as e:
            failed = True
            self.metrics.errors.inc()
            log.exception(
                "reconcile of %s failed; retrying in %.0fs",
                h.ref,
                self.error_retry_s,
                extra={"rollout": h.key[1], "namespace": h.key[0]},
            )
            message = (
                f"reconcile failed (retrying in {format_duration(self.error_retry_s)}): {describe_error(e)}"
            )
            if message != h.last_error:
                h.last_error = message
                self._announce(h, "ReconcileError", message, "warning")
            self._report_reconcile(h, message)
        finally:
            self.metrics.reconcile.observe(time.monotonic() - started)
            with self._cond:
                h.running = False
                self._inflight.pop(id(h), None)
                if not h.removed and self._leading and not self._stopping.is_set():
                    if h.rerun:
                        h.rerun = False
                        self._schedule_locked(h, self.clock.now())
                    elif failed:
                        self._schedule_locked(h, self.clock.now() + self.error_retry_s)
                    elif next_due is not None:
                        self._schedule_locked(h, next_due)
                self._cond.notify_all()
            self.refresh_gauges()

    def _report_reconcile(self, h: RolloutHandler, error: str | None) -> None:
        """The `Ready` condition: False with the error while reconciling fails, True once it works again."""
        store = h.store
        if store is None or h.removed or h.deleted:
            return
        try:
            store.report_reconcile(error)
        except Exception as e:  # the API itself may be what fails: the Event and the log say it
            log.warning(
                "could not record the reconcile %s in the status of %s: %s",
                "error" if error else "recovery",
                h.ref,
                e,
                extra={"rollout": h.key[1], "namespace": h.key[0]},
            )

    def refresh_gauges(self) -> None:
        with self._cond:
            handlers = [h for h in self.handlers.values() if not h.removed]
        counts = dict.fromkeys(PHASES, 0)
        for h in handlers:
            counts[h.phase] = counts.get(h.phase, 0) + 1
        for phase, n in counts.items():
            self.metrics.rollouts.labels(phase).set(n)
        now = time.monotonic()
        with self._cond:
            ages = [now - f.started for f in self._inflight.values()]
        stuck = sum(age >= self.stuck_after_s for age in ages)
        slow = sum(self.slow_after_s <= age < self.stuck_after_s for age in ages)
        self.metrics.in_flight.labels("normal").set(len(ages) - slow - stuck)
        self.metrics.in_flight.labels("slow").set(slow)
        self.metrics.in_flight.labels("stuck").set(stuck)

    # -- reconcile one rollout -----------------------------------------------------------

    def _reconcile(self, h: RolloutHandler) -> float | None:
        """One turn for one rollout; returns when it is next due (None: only on a change)."""
        with self._cond:
            obj = copy.deepcopy(h.obj)
            deleted = h.deleted
        meta = _meta(obj)
        if h.uid is not None and meta.get("uid") != h.uid:
            # Deleted and created again between two looks: the old rollout is over.
            self._finish_deleted(h, None)
            self._reset(h)
        if deleted or meta.get("deletionTimestamp"):
            self._finish_deleted(h, obj)
            return None
        h.uid = meta.get("uid")
        store = self._store_for(h, obj)
        store.generation = meta.get("generation")

        policy: Policy | None = None
        try:
            # Every check `validate` makes, so a query that cannot be built is PolicyValid=False.
            policy = load_checked_policy(resource_document(obj))
            self._admit(obj, policy)
            store.problems = []
        except PolicyError as e:
            policy = None
            store.problems = [redact(str(p)) for p in e.problems]
            if h.invalid_reported != store.generation:
                h.invalid_reported = store.generation
                self._announce(
                    h,
                    "InvalidPolicy",
                    "the policy is invalid; nothing was changed: " + "; ".join(store.problems),
                    "warning",
                )

        # An invalid edit of a running rollout keeps it running under its last valid spec:
        # its checks keep protecting the traffic.
        target = policy
        if target is None:
            target = h.runner.policy if h.runner else _policy_from_spec(obj, store.status.get("appliedSpec"))
            if target is not None and not self._routes_allowed(h, target):
                target = None  # saved by an older, laxer controller: not ours to run on
            state = h.runner.state if h.runner else saved_state(store.status)
            if target is None or state is None or state.terminal:
                h.phase = str(state.phase.value if state else "Invalid")
                store.write(state)
                return None
        if h.runner is None or h.fingerprint != engine.policy_fingerprint(target):
            self._switch(h, obj, target, store, spec_valid=policy is not None)
        runner = h.runner
        assert runner is not None and runner.state is not None

        before = runner.state
        commands = self._new_commands(h, obj, store)
        for cmd in commands:
            runner.request(cmd)
        state = before
        if not before.terminal and (commands or self.clock.now() >= before.next_tick_at(target)):
            state = runner.tick_once()
            self.metrics.ticks.inc(max(state.ticks - before.ticks, 0))
            if state.phase is Phase.ROLLED_BACK and before.phase is not Phase.ROLLED_BACK:
                self.metrics.rollbacks.labels(rollback_category(state.failed_checks)).inc()
        store.write(state)  # a no-op unless something shown changed (generation, commands, drift)
        self._update(h, state)
        self._ensure_finalizer(h, present=not state.terminal)
        return None if state.terminal else state.next_tick_at(target)

    def _admit(self, obj: Mapping[str, Any], policy: Policy) -> None:
        """What this controller refuses to do for a spec that is otherwise valid (PolicyError).

        A ModelRollout may only move the routes of its own namespace (unless the controller
        was started with --allow-cross-namespace), and may only name a Prometheus the
        controller itself was configured with: a spec must not be able to make the
        controller write another team's VirtualService or send requests anywhere.
        """
        problems: list[Problem] = []
        own = str(_meta(obj).get("namespace") or "")
        vs_ns = policy.virtual_service.namespace
        if vs_ns != own and not self.allow_cross_namespace:
            problems.append(
                Problem(
                    "spec.virtualService.namespace",
                    f"the VirtualService must be in this ModelRollout's namespace {own!r}, not {vs_ns!r}: "
                    "this controller changes routes only in the rollout's own namespace "
                    "(an operator can allow it with --allow-cross-namespace); nothing was changed",
                )
            )
        spec = obj.get("spec")
        metrics = spec.get("metrics") if isinstance(spec, Mapping) else None
        named = metrics.get("address") if isinstance(metrics, Mapping) else None
        if isinstance(named, str) and self._allowed_metrics(named) is None:
            allowed = ", ".join(str(a) for a in self.allowed_metrics)
            problems.append(
                Problem(
                    "spec.metrics.address",
                    f"{redact_url(named)!r} is not a Prometheus this controller may query "
                    f"(allowed: {allowed}; an operator adds one with --allow-metrics-address); "
                    "it was not contacted and nothing was changed",
                )
            )
        elif isinstance(named, str) and urlsplit(named.strip()).password is not None:
            register_secret(urlsplit(named.strip()).password)
            problems.append(
                Problem(
                    "spec.metrics.address",
                    "must not carry credentials (everyone who can read the ModelRollout sees them): "
                    "give them to the controller's --prometheus or --allow-metrics-address instead",
                )
            )
        if problems:
            raise PolicyError(problems)

    def _routes_allowed(self, h: RolloutHandler, policy: Policy) -> bool:
        return self.allow_cross_namespace or policy.virtual_service.namespace == h.key[0]

    def _allowed_metrics(self, url: str) -> MetricsAddress | None:
        key = address_key(url)
        return next((a for a in self.allowed_metrics if a.key == key), None) if key else None

    def metrics_url(self, policy: Policy) -> str:
        """The Prometheus to query for ``policy``: the configured entry its address names, else the default."""
        named = self._allowed_metrics(policy.metrics.address)
        if named is not None:
            return named.url
        # The spec named no address (admission rejects any other): the controller's own.
        return self.allowed_metrics[0].url

    def _update(self, h: RolloutHandler, state: RolloutState) -> None:
        h.phase = state.phase.value
        self.metrics.weight.labels(h.key[1], h.key[0]).set(state.weights.candidate)

    def _store_for(self, h: RolloutHandler, obj: Mapping[str, Any]) -> KubeStatusStore:
        if h.store is None:
            namespace, name = h.key
            h.store = KubeStatusStore(
                self.api,
                namespace,
                name,
                drift=lambda: h.runner.external_change if h.runner else None,
                clock=self.clock.now,
                request_timeout_s=self.request_timeout_s,
            )
            h.store.status = dict(obj.get("status") or {})
            h.store.handled_commands = dict(h.store.status.get("handledCommands") or {})
        if h.events is None or h.events.involved.get("uid") != _meta(obj).get("uid"):
            meta = _meta(obj)
            h.events = KubeEventNotifier(
                self.api,
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                clock=self.clock.now,
            )
        return h.store

    def _switch(
        self,
        h: RolloutHandler,
        obj: Mapping[str, Any],
        target: Policy,
        store: KubeStatusStore,
        spec_valid: bool,
    ) -> None:
        """Start (or resume) the rollout of ``target``; a different one in progress goes back to stable first."""
        fingerprint = engine.policy_fingerprint(target)
        if h.runner is None:
            store.read()  # the freshest status: what a previous leader or process saved
        old_state = h.runner.state if h.runner else saved_state(store.status)
        old_policy = h.runner.policy if h.runner else _policy_from_spec(obj, store.status.get("appliedSpec"))
        if old_state is not None and old_state.policy_fingerprint != fingerprint and not old_state.terminal:
            self._supersede(h, old_state, old_policy, target, store)
        self._drop_runner(h)
        router, metrics = self.backend(target)
        h.notifier = notifier_for_policy(
            target.notifications,
            extra=[h.events] if h.events else [],
            read_secret=functools.partial(_read_secret_url, self.api, target.namespace),
        )
        store.policy = target
        if spec_valid:
            store.applied_spec = copy.deepcopy(dict(obj.get("spec") or {}))
        runner = RolloutRunner(
            target, router, metrics, store, _RedactingNotifier(h.notifier), self.clock, judge=self.judge
        )
        try:
            state = runner.start_or_resume()
        except BaseException:
            # Nothing half-made stays behind: the next reconcile starts (or resumes) afresh.
            self._drop_runner(h)
            raise
        h.runner, h.fingerprint = runner, fingerprint
        log.info(
            "running %s: %s at step %d",
            h.ref,
            state.phase.value,
            state.step_index + 1,
            extra={"rollout": h.key[1], "namespace": h.key[0], "candidate": target.candidate.version},
        )

    def _supersede(
        self,
        h: RolloutHandler,
        old_state: RolloutState,
        old_policy: Policy | None,
        target: Policy,
        store: KubeStatusStore,
    ) -> None:
        now = self.clock.now()
        restored = self._restore_stable(h, old_policy, old_state.run_id)
        old_stable = old_policy.stable.version if old_policy else str(store.status.get("stableVersion") or "")
        old_candidate = (
            old_policy.candidate.version if old_policy else str(store.status.get("candidateVersion") or "")
        )
        why = f"the spec changed (candidate {target.candidate.version}); the rollout was restarted"
        store.record_history(
            history_entry(
                old_state, old_stable, old_candidate, outcome="superseded", reason=why, finished_at=now
            )
        )
        if restored:
            self.metrics.rollbacks.labels("superseded").inc()
        self._announce(
            h,
            "Restarted",
            f"the spec changed while {old_candidate} was at {old_state.weights.candidate}%: "
            f"traffic back on stable, restarting with {target.candidate.version}",
            "warning",
        )

    def _restore_stable(self, h: RolloutHandler, policy: Policy | None, run_id: str = "") -> bool:
        """Write 100% stable with the router of ``policy`` (the rollout being ended)."""
        if policy is None:
            log.warning(
                "%s: no record of the spec of the rollout in progress; its weights were left as they are",
                h.ref,
            )
            return False
        if not self._routes_allowed(h, policy):
            log.warning(
                "%s: the rollout in progress names VirtualService %s/%s outside its namespace; "
                "not touched (--allow-cross-namespace is off)",
                h.ref,
                policy.virtual_service.namespace,
                policy.virtual_service.name,
            )
            return False
        router = (
            h.runner.router if h.runner is not None and h.runner.policy == policy else self.backend(policy)[0]
        )
        # One attempt (routers do not retry): a failure fails this reconcile, which is retried.
        router.set_weights(ALL_STABLE)
        release = getattr(router, "release", None)
        if run_id and callable(release):
            release(run_id)  # the route is free for the next rollout (ownership, run/runner.py)
        return True

    def _finish_deleted(self, h: RolloutHandler, obj: Mapping[str, Any] | None) -> None:
        """The resource is being deleted (or is gone): leave its traffic on stable."""
        status = (obj or {}).get("status") or (h.store.status if h.store else {})
        state = h.runner.state if h.runner else saved_state(status)
        policy = h.runner.policy if h.runner else _policy_from_spec(obj, status.get("appliedSpec"))
        in_progress = state is not None and not state.terminal and not h.finalized
        if state is not None and in_progress and self._restore_stable(h, policy, state.run_id):
            self.metrics.rollbacks.labels("deleted").inc()
            self._announce(
                h,
                "Deleted",
                f"the ModelRollout was deleted at {state.weights.candidate}%: 100% of traffic back on stable",
                "warning",
            )
        h.finalized = True
        self._drop_runner(h)
        h.phase = "RolledBack" if in_progress else h.phase
        if obj is not None and FINALIZER in (_meta(obj).get("finalizers") or []):
            self._ensure_finalizer(h, present=False, obj=obj)
        with self._cond:
            gone = h.deleted
        if gone:
            self._remove(h)

    def _remove(self, h: RolloutHandler) -> None:
        self._drop_runner(h)
        with self._cond:
            h.removed = True
            if self.handlers.get(h.key) is h:
                del self.handlers[h.key]
        with contextlib.suppress(KeyError):
            self.metrics.weight.remove(h.key[1], h.key[0])
        log.info("forgot %s (deleted)", h.ref, extra={"rollout": h.key[1], "namespace": h.key[0]})

    def _reset(self, h: RolloutHandler) -> None:
        self._drop_runner(h)
        h.store, h.events, h.uid, h.invalid_reported, h.finalized = None, None, None, None, False

    def _drop_runner(self, h: RolloutHandler) -> None:
        if h.notifier is not None:
            h.notifier.close(timeout_s=5.0)
        h.notifier = None
        h.runner = None
        h.fingerprint = ""

    def _announce(self, h: RolloutHandler, kind: str, message: str, severity: str = "info") -> None:
        message = redact(message)
        a = Announcement(rollout=h.key[1], kind=kind, message=message, severity=severity)
        if h.notifier is not None:
            h.notifier.notify(a)
            return
        level = logging.WARNING if severity == "warning" else logging.INFO
        log.log(level, message, extra={"rollout": h.key[1], "namespace": h.key[0], "event": kind})
        if h.events is not None:
            h.events.notify(a)

    def _new_commands(
        self, h: RolloutHandler, obj: Mapping[str, Any], store: KubeStatusStore
    ) -> list[Command]:
        """Orders in annotations not handled yet (abort first: safety before anything else)."""
        found: list[Command] = []
        for word, value in _command_values(obj).items():
            if store.handled_commands.get(word) == value:
                continue
            store.handled_commands[word] = value  # saved with the status write that follows
            if word != "pause":
                found.append(Command(word))
                continue
            flag = value.split("@", 1)[0].strip().lower()
            if flag in ("true", "yes", "1"):
                found.append(Command.PAUSE)
            elif flag in ("false", "no", "0"):
                found.append(Command.RESUME)
            else:
                self._announce(
                    h,
                    "InvalidCommand",
                    f"annotation {COMMAND_ANNOTATIONS['pause']}={value!r} is neither true nor false; ignored",
                    "warning",
                )
        order = [Command.ABORT, Command.PAUSE, Command.RESUME, Command.APPROVE]
        return sorted(found, key=order.index)

    def _ensure_finalizer(
        self, h: RolloutHandler, present: bool, obj: Mapping[str, Any] | None = None
    ) -> None:
        """Keep FINALIZER on the resource while its rollout is in progress, and only then."""
        current: Any = obj if obj is not None else h.obj
        if (FINALIZER in (_meta(current).get("finalizers") or [])) == present:
            return
        for attempt in range(5):
            # Our own status writes move the resourceVersion on: start from a fresh read.
            current = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, h.key[0], PLURAL, h.key[1], _request_timeout=self.request_timeout_s
            )
            meta = _meta(current)
            finalizers = list(meta.get("finalizers") or [])
            if (FINALIZER in finalizers) == present:
                return
            finalizers = [*finalizers, FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
            body = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
            try:
                updated: Any = self._custom.patch_namespaced_custom_object(
                    GROUP, VERSION, h.key[0], PLURAL, h.key[1], body, _request_timeout=self.request_timeout_s
                )
                with self._cond:
                    if isinstance(updated, dict) and not h.deleted:
                        h.obj = updated
                return
            except ApiException as e:
                if e.status == 404:
                    return
                if e.status != 409 or attempt == 4:
                    raise

    # -- default backend -------------------------------------------------------------------

    def _istio_backend(self, policy: Policy) -> tuple[TrafficRouter, MetricsSource]:
        router = router_for("istio", policy, RouterTarget(api_client=self.api))
        return router, metrics_for("prometheus", policy, MetricsTarget(url=self.metrics_url(policy)))


@contextlib.contextmanager
def running(controller: Controller) -> Iterator[Controller]:
    """``with running(Controller(...)) as c:`` starts it and always stops it."""
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


__all__ = [
    "BackendFactory",
    "Controller",
    "ControllerError",
    "ControllerMetrics",
    "LeaderElector",
    "RolloutHandler",
    "StatusWriteError",
    "parse_addr",
    "running",
]
