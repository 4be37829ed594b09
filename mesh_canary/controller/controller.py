"""The Controller: wires the informer, the work queue, the reconciler, the finalizer, the Lease,
the probes and the metrics together, and owns the process's life cycle (start, stop, run)."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client

from mesh_canary.controller.admission import Admission
from mesh_canary.controller.finalizer import Finalizer
from mesh_canary.controller.handler import Key, RolloutHandler
from mesh_canary.controller.health import HealthServer
from mesh_canary.controller.informer import Informer
from mesh_canary.controller.leader import LeaderElector, ShardElector, elector_for
from mesh_canary.controller.metrics import ControllerMetrics
from mesh_canary.controller.reconcile import BackendFactory, Reconciler
from mesh_canary.controller.registry import ControllerRegistry
from mesh_canary.controller.settings import ControllerSettings, shard_of
from mesh_canary.controller.workqueue import WorkQueue
from mesh_canary.core.durations import format_duration
from mesh_canary.core.model import Policy
from mesh_canary.core.verdicts import Judge
from mesh_canary.errors import CouldNotWork
from mesh_canary.kube.errors import describe_error
from mesh_canary.kube.watchcache import WatchCache
from mesh_canary.metrics import MetricsTarget, metrics_for
from mesh_canary.metrics.coalesce import QueryCoalescer
from mesh_canary.protocols import Clock, MetricsSource, TrafficRouter
from mesh_canary.routing import RouterTarget, router_for_route
from mesh_canary.run.clock import SystemClock

log = logging.getLogger("mesh_canary.controller")


class ControllerError(CouldNotWork, RuntimeError):
    pass


class Controller:
    """Reconciles every ModelRollout it can see. `start()`, then `stop()` (or `run()` until SIGTERM)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        settings: ControllerSettings | None = None,
        *,
        backend: BackendFactory | None = None,
        judge: Judge | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.api = api_client
        self.settings = s = settings or ControllerSettings()
        self.clock: Clock = clock or SystemClock()
        self.metrics = ControllerMetrics()
        self.admission = Admission(s)
        # One query per metric family and Prometheus per analysis instant, shared by the rollouts.
        self.coalescer = QueryCoalescer(count=self.metrics.prometheus_query)
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        # Watch caches of the routing objects, by (group, version, plural): a turn looks at its
        # route's live weights there instead of a GET (writes still read; kube/watchcache.py).
        self._route_caches: dict[tuple[str, str, str], WatchCache] = {}
        self._route_caches_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        # The gauges are refreshed when /metrics is read (`_exposition`), not after every turn:
        # that walked every rollout under the queue's lock, N times per interval at N rollouts.
        self.queue = WorkQueue(s, self.clock, self._turn, self._stopping)
        self.backend: BackendFactory = backend or self._istio_backend
        self.finalizer = Finalizer(
            api_client,
            self.admission,
            self.metrics,
            lambda policy: self.backend(policy)[0],
            request_timeout_s=s.request_timeout_s,
            lock=self.queue.cond,
            forget=self._remove,
        )
        self.reconciler = Reconciler(
            api_client,
            backend=self.backend,
            admission=self.admission,
            finalizer=self.finalizer,
            metrics=self.metrics,
            clock=self.clock,
            judge=judge,
            lock=self.queue.cond,
            request_timeout_s=s.request_timeout_s,
            registry=ControllerRegistry(
                self.admission,
                self.clock,
                self._kick,
                token_env=s.registry_token_env,
                retry_s=s.error_retry_s,
            ),
            overdue=self.queue.overdue,
        )
        self.informer = Informer(
            api_client,
            s,
            self._stopping,
            upsert=self.queue.upsert,
            deleted=self.queue.deleted,
            known=self.queue.known,
        )
        self._health = self._health_server()
        self._dashboard = contextlib.ExitStack()
        self.dashboard_url: str | None = None
        self._elector: LeaderElector | None = (
            elector_for(api_client, s, self._started_leading, self._stopped_leading)
            if s.leader_elect
            else None
        )
        # --shards: the shards whose Lease this process holds (guarded by the queue's lock).
        self._shards_held: set[int] = set()
        self._shards: ShardElector | None = None
        if s.shards:
            self.queue.owns = self._owns
            self._shards = ShardElector(api_client, s, self._started_shard, self._stopped_shard)
        self.metrics.leader.set(1 if self.queue.leading and not s.shards else 0)

    def _health_server(self) -> HealthServer | None:
        s = self.settings
        if not s.metrics_addr:
            return None
        return HealthServer(
            s.metrics_addr,
            liveness=self.liveness,
            readiness=self.readiness,
            metrics=self._exposition,
            bind_address=s.bind_address,
        )

    def _serve_dashboard(self) -> None:
        """The live dashboard (`--dashboard-address`) of the ModelRollouts this controller
        watches, read from the informer's copies; a bind failure is an error at start."""
        from mesh_canary.controller.settings import parse_addr
        from mesh_canary.run.dashboard_sources import WatchedRollouts, serving

        s = self.settings
        if not s.dashboard_addr:
            return
        source = WatchedRollouts(self.api, self._watched_objects)
        address = parse_addr(s.dashboard_addr, s.bind_address, "--dashboard-address")
        try:
            self.dashboard_url = self._dashboard.enter_context(
                serving([source], address, allow_writes=s.dashboard_allow_writes)
            )
        except OSError as e:
            raise ControllerError(
                f"cannot serve the dashboard on {s.dashboard_addr}: {e.strerror or e}"
            ) from e
        log.info(
            "dashboard serving",
            extra={"url": self.dashboard_url, "writes": s.dashboard_allow_writes},
        )

    def _watched_objects(self) -> list[dict[str, Any]]:
        with self.queue.cond:
            return [copy.deepcopy(h.obj) for h in self.handlers.values() if not h.deleted and h.obj]

    # -- what others read ---------------------------------------------------------------

    @property
    def handlers(self) -> dict[Key, RolloutHandler]:
        return self.queue.handlers

    @property
    def synced(self) -> threading.Event:
        return self.informer.synced

    @property
    def metrics_port(self) -> int | None:
        return self._health.port if self._health else None

    @property
    def leading(self) -> bool:
        return self.queue.leading

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Controller:
        targets: list[tuple[str, Callable[[], None]]] = [
            (f"informer {ns or '*'}", functools.partial(self.informer.run, ns))
            for ns in self.informer.namespaces
        ]
        targets.append(("scheduler", self.queue.run))
        if self._elector is not None:
            elector = self._elector
            targets.append(("leader-election", lambda: elector.run(self._stopping)))
        if self._shards is not None:
            shards = self._shards
            targets.append(("shard-election", lambda: shards.run(self._stopping)))
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self._health is not None:
            self._health.start()
        self._serve_dashboard()
        log.info(
            "controller started",
            extra={
                "namespace": ",".join(self.settings.watched) or "*",
                "leaderElect": self.settings.leader_elect,
                "shards": self.settings.shards,
                "identity": self.settings.identity,
            },
        )
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """Finish in-flight ticks, release the Lease, stop every thread."""
        if self._stopping.is_set():
            return
        log.info("controller stopping: finishing in-flight ticks")
        self._stopping.set()
        with self.queue.cond:
            self.queue.cond.notify_all()
        self.informer.stop()
        deadline = time.monotonic() + timeout_s
        left = self.queue.drain(deadline)
        if left:
            # Daemon threads: a reconcile stuck on an outside call cannot keep the process alive.
            log.warning("controller stopping with reconciles still in flight: %s", ", ".join(left))
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        for h in list(self.handlers.values()):
            h.drop_runner()
        with self._route_caches_lock:
            caches = list(self._route_caches.values())
        for cache in caches:
            cache.stop()
        if self._health is not None:
            self._health.stop()
        self._dashboard.close()
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

    # -- health -------------------------------------------------------------------------

    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) or self._stopping.is_set()

    def stuck(self) -> list[tuple[str, float]]:
        """Reconciles running longer than ``stuck_after_s`` (far past every outside call's deadline)."""
        return self.queue.stuck()

    def liveness(self) -> tuple[bool, str]:
        """`/livez`: a dead thread or a wedged reconcile fails it, so that Kubernetes restarts us."""
        if not self.alive():
            return False, "a controller thread died"
        stuck = self.stuck()
        if stuck:
            ref, age = stuck[0]
            return False, (
                f"{len(stuck)} reconcile(s) stuck, e.g. {ref} for {age:.0f}s "
                f"(limit {format_duration(self.settings.stuck_after_s)})"
            )
        return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        if not self.synced.is_set():
            return False, "the ModelRollout informer has not listed yet"
        if self.settings.leader_elect and not self.queue.leading:
            return False, "not the leader: standing by"
        if self.settings.shards:
            return True, f"ok: holding shards {self.shards_held or 'none'} of {self.settings.shards}"
        return True, "ok"

    def refresh_gauges(self) -> None:
        self.metrics.set_phases(h.phase for h in self.queue.live())
        self.metrics.set_in_flight(*self.queue.counts())

    def _exposition(self) -> bytes:
        self.refresh_gauges()
        return self.metrics.exposition()

    # -- leadership ---------------------------------------------------------------------

    def _started_leading(self) -> None:
        self.metrics.leader.set(1)
        self.queue.set_leading(True)

    def _stopped_leading(self) -> None:
        self.metrics.leader.set(0)
        for h in self.queue.set_leading(False):
            # Whoever leads next resumes from the status; our copy may be stale by then.
            h.drop_runner()

    # -- shards (--shards) --------------------------------------------------------------

    @property
    def shards_held(self) -> list[int]:
        with self.queue.cond:
            return sorted(self._shards_held)

    def shard_of(self, key: Key) -> int:
        return shard_of(key[0], key[1], self.settings.shards)

    def _owns(self, key: Key) -> bool:
        """Whether a turn of ``key`` may start: its shard held, and its Lease renewed within the
        renew deadline (the queue calls it holding its lock)."""
        shard = self.shard_of(key)
        return shard in self._shards_held and self._shards is not None and self._shards.renewed_lately(shard)

    def _started_shard(self, shard: int) -> None:
        with self.queue.cond:
            self._shards_held.add(shard)
        self.metrics.leader.set(1)
        log.info(
            "sharding: reconciling shard %d",
            shard,
            extra={"shard": shard, "identity": self.settings.identity},
        )
        self.queue.set_leading(True, lambda key: self.shard_of(key) == shard)

    def _stopped_shard(self, shard: int) -> None:
        """No new turn of the shard's rollouts starts; returns once those in flight ended."""
        with self.queue.cond:
            self._shards_held.discard(shard)
            self.metrics.leader.set(1 if self._shards_held else 0)
        for h in self.queue.set_leading(False, lambda key: self.shard_of(key) == shard):
            h.drop_runner()  # whoever holds the shard next resumes from the status
        log.info(
            "sharding: stopped reconciling shard %d",
            shard,
            extra={"shard": shard, "identity": self.settings.identity},
        )

    # -- what the informer sees ---------------------------------------------------------

    def _remove(self, h: RolloutHandler) -> None:
        h.drop_runner()
        with self.queue.cond:
            h.removed = True
            if self.handlers.get(h.key) is h:
                del self.handlers[h.key]
        self.metrics.forget(h.key)
        log.info("forgot %s (deleted)", h.ref, extra=h.log_extra)

    # -- one turn -----------------------------------------------------------------------

    def _kick(self, h: RolloutHandler) -> None:
        """Turn ``h`` again soon (from another thread: the registry's outcome is to be written)."""
        with self.queue.cond:
            if not h.removed and self.handlers.get(h.key) is h:
                self.queue.kick_locked(h)

    def _turn(self, h: RolloutHandler) -> tuple[float | None, bool]:
        """Reconcile ``h`` once; a failure is counted, announced, shown in ``Ready`` and retried."""
        started = time.monotonic()
        try:
            next_due = self.reconciler.reconcile(h)
            h.last_error = ""
            self._report_reconcile(h, None)
            return next_due, False
        except Exception as e:
            self.metrics.errors.inc()
            retry = self.settings.error_retry_s
            log.exception("reconcile of %s failed; retrying in %.0fs", h.ref, retry, extra=h.log_extra)
            message = f"reconcile failed (retrying in {format_duration(retry)}): {describe_error(e)}"
            if message != h.last_error:
                h.last_error = message
                h.announce("ReconcileError", message, "warning")
            self._report_reconcile(h, message)
            return None, True
        finally:
            self.metrics.reconcile.observe(time.monotonic() - started)

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
                describe_error(e),
                extra=h.log_extra,
            )

    # -- default backend ----------------------------------------------------------------

    def route_cache(self, group: str, version: str, plural: str) -> WatchCache | None:
        """The watch cache of one kind of routing object (started on first use); None once stopping."""
        with self._route_caches_lock:
            if self._stopping.is_set():
                return None
            key = (group, version, plural)
            cache = self._route_caches.get(key)
            if cache is None:
                cache = self._route_caches[key] = WatchCache(
                    self.api,
                    group,
                    version,
                    plural,
                    stopping=self._stopping,
                    request_timeout_s=self.settings.request_timeout_s,
                    watch_timeout_s=self.settings.watch_timeout_s,
                )
            return cache

    def _istio_backend(self, policy: Policy) -> tuple[TrafficRouter, MetricsSource]:
        router = router_for_route(policy, RouterTarget(api_client=self.api, caches=self.route_cache))
        url = self.admission.metrics_url(policy)
        return router, metrics_for("prometheus", policy, MetricsTarget(url=url, coalescer=self.coalescer))


@contextlib.contextmanager
def running(controller: Controller) -> Iterator[Controller]:
    """``with running(Controller(...)) as c:`` starts it and always stops it."""
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()
