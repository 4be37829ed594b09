"""Leader election: only the replica holding the ``coordination.k8s.io`` Lease reconciles.

The official client's `kubernetes.leaderelection` decides who holds it; this module adds a
loop that can stop and releases the Lease on shutdown.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kubernetes.client

from mesh_canary.controller.settings import ControllerSettings

log = logging.getLogger("mesh_canary.controller")


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


def elector_for(
    api_client: kubernetes.client.ApiClient,
    settings: ControllerSettings,
    on_started: Callable[[], None],
    on_stopped: Callable[[], None],
) -> LeaderElector:
    """The elector ``settings`` ask for (``--leader-elect``)."""
    return LeaderElector(
        api_client,
        settings.lease_name,
        settings.lease_namespace_or_default(),
        settings.identity,
        on_started,
        on_stopped,
        lease_duration_s=settings.lease_duration_s,
        renew_deadline_s=settings.renew_deadline_s,
        retry_period_s=settings.retry_period_s,
    )
