"""Leader election: only the replica holding the ``coordination.k8s.io`` Lease reconciles.

The official client's `kubernetes.leaderelection` decides who holds it; this module adds a
loop that can stop and releases the Lease on shutdown. With ``--shards K`` there is one
Lease per shard (`ShardElector`): each process holds some, by the same rules, and
reconciles only the rollouts of the shards it holds.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import kubernetes.client

from mesh_canary.controller.settings import ControllerSettings

log = logging.getLogger("mesh_canary.controller")

# On a shard's Lease: a process holding fewer shards than its limit asks the holder (one
# over its limit) to hand this shard over. The holder stops reconciling it, then releases it.
WANTED_BY_ANNOTATION = "mesh-canary.io/shard-wanted-by"


@dataclass(frozen=True)
class LeaseView:
    """A Lease as the official client judges it before acquiring: who holds it, and whether
    that holder has let it expire (unchanged for a whole lease duration since we saw it)."""

    holder: str | None
    expired: bool
    wanted_by: str = ""


class _BoundedLeases:
    """The Lease calls the official `LeaseLock` makes, each with a total deadline: a renewal
    stuck on a slow API server fails in time for the holder to stop before its Lease expires."""

    def __init__(self, api: kubernetes.client.CoordinationV1Api, timeout_s: float) -> None:
        self._api, self._timeout_s = api, timeout_s

    def read_namespaced_lease(self, name: str, namespace: str) -> Any:
        return self._api.read_namespaced_lease(name, namespace, _request_timeout=self._timeout_s)

    def create_namespaced_lease(self, namespace: str, body: Any) -> Any:
        return self._api.create_namespaced_lease(namespace, body, _request_timeout=self._timeout_s)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any) -> Any:
        return self._api.replace_namespaced_lease(name, namespace, body, _request_timeout=self._timeout_s)


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

        if not (lease_duration_s >= 2 and lease_duration_s > renew_deadline_s > retry_period_s > 0):
            raise ValueError(
                "leader election needs lease duration (2 s or more) > renew deadline > retry period > 0"
            )
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.leading = False
        self._last_renew = 0.0
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        lock = lock_mod.LeaseLock(name, namespace, identity)
        # The module builds a client from the default config otherwise; each call of an
        # attempt (a read, then a write) within half the renew deadline.
        lock.api_instance = _BoundedLeases(self._api, renew_deadline_s / 2)
        # Config validates with sys.exit (lease > renew deadline > 1.2 x retry, retry >= 1 s);
        # only the lease duration is used here: the rest belongs to the module's own loop,
        # which this class replaces.
        config = config_mod.Config(
            lock, int(lease_duration_s), int(lease_duration_s) - 0.5, 1, on_started, on_stopped
        )
        self._election: Any = election_mod.LeaderElection(config)
        logging.getLogger("leaderelection").setLevel(logging.WARNING)  # it logs every retry at INFO

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.retry_period_s)
        self.stand_down()

    def step(self) -> bool:
        """One acquire-or-renew by the official client's rules, with the callbacks it calls for.

        A holder that could not renew for ``renew_deadline_s`` stops (``on_stopped``) before
        the Lease can expire for anyone else (``lease_duration_s``). Whether it holds the Lease now.
        """
        lapsed = self.leading and not self.renewed_lately()
        try:
            ok = bool(self._election.try_acquire_or_renew())
        except Exception as e:  # the API server unreachable: treated as a failed renew
            log.warning("leader election: could not reach the Lease %s: %s", self.name, e)
            ok = False
        now = time.monotonic()
        if ok:
            self._last_renew = now
            if not self.leading:
                self.leading = True
                log.info(
                    "leader election: %s now holds Lease %s/%s", self.identity, self.namespace, self.name
                )
                self.on_started()
            elif lapsed:  # renewed late, but before anyone took it: everything due again
                log.info("leader election: renewed Lease %s/%s late", self.namespace, self.name)
                self.on_started()
        elif self.leading and now - self._last_renew >= self.renew_deadline_s:
            self.leading = False
            log.warning("leader election: lost Lease %s/%s", self.namespace, self.name)
            self.on_stopped()
        return self.leading

    def renewed_lately(self) -> bool:
        """Held, and renewed within the renew deadline: what a holder may act on, even while
        its loop waits on the API server."""
        return self.leading and time.monotonic() - self._last_renew < self.renew_deadline_s

    def stand_down(self) -> None:
        """Stop reconciling under this Lease (``on_stopped`` returns once the turns in flight
        ended), then release it."""
        if self.leading:
            self.leading = False
            self.on_stopped()
            self.release()

    def observe(self, lease: Any | None) -> LeaseView:
        """Judge the Lease as read (None: there is none) and note when its record last changed,
        as `try_acquire_or_renew` does, so that a later `step` agrees on its expiry."""
        if lease is None:
            return LeaseView(None, True)
        lock = self._election.election_config.lock
        lock.lease_reference = lease
        record = lock.get_lock_object(lease)
        if record.holder_identity is None or record.renew_time is None:
            return LeaseView(None, True, self.wanted_by())
        election = self._election
        if election.observed_record is None or record.__dict__ != election.observed_record.__dict__:
            election.observed_record = record
            election.observed_time_milliseconds = int(time.time() * 1000)
        expired = (
            election.observed_time_milliseconds + election.election_config.lease_duration * 1000
            <= time.time() * 1000
        )
        return LeaseView(str(record.holder_identity), expired, self.wanted_by())

    def wanted_by(self) -> str:
        """Who asked for this Lease (`WANTED_BY_ANNOTATION`), as of its last read."""
        lease = self._election.election_config.lock.lease_reference
        annotations = (lease.metadata.annotations if lease is not None and lease.metadata else None) or {}
        return str(annotations.get(WANTED_BY_ANNOTATION) or "")

    def ask(self) -> None:
        """Ask the holder for this Lease (best effort: asked again at the next retry)."""
        body = {"metadata": {"annotations": {WANTED_BY_ANNOTATION: self.identity}}}
        try:
            self._api.patch_namespaced_lease(self.name, self.namespace, body)
            log.info("sharding: %s asked for Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as e:
            log.warning("sharding: could not ask for Lease %s/%s: %s", self.namespace, self.name, e)

    def release(self) -> None:
        """Clear the holder so that another replica need not wait for the lease to expire."""
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            if lease.metadata is not None and lease.metadata.annotations:
                lease.metadata.annotations.pop(WANTED_BY_ANNOTATION, None)
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


class ShardElector:
    """``--shards K``: one `LeaderElector` per shard Lease (``<lease>-shard-<i>``); a process
    reconciles the rollouts of the shards it holds.

    How the shards spread, at every retry period:

    - each held Lease is renewed (a shard whose renewals fail for ``renew_deadline_s`` is
      dropped before its Lease can expire for another process);
    - a process below its limit (``ceil(K / replicas)``) takes free or expired shards, in
      an order of its own (a hash of its identity and the shard), so that processes starting
      together try different shards first;
    - at or above its limit it takes one expired shard per retry period (a dead process's:
      unchanged for a whole lease duration), or one that stayed free a whole lease duration
      (nobody below their limit wanted it), so that every shard is held while one process lives;
    - below its limit with nothing free, it asks (`WANTED_BY_ANNOTATION`) a process holding
      more than the limit for one shard; that process stops reconciling it, then releases
      it, and the one that asked takes it: a restarted process gets its share back.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        settings: ControllerSettings,
        on_started: Callable[[int], None],
        on_stopped: Callable[[int], None],
    ) -> None:
        s = settings
        self.identity = s.identity
        self.on_stopped = on_stopped
        self.limit = s.shard_limit
        self.lease_duration_s = s.lease_duration_s
        self.retry_period_s = s.retry_period_s
        self.request_timeout_s = s.request_timeout_s
        self.namespace = s.lease_namespace_or_default()
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self.electors = {
            i: LeaderElector(
                api_client,
                s.shard_lease(i),
                self.namespace,
                s.identity,
                functools.partial(on_started, i),
                functools.partial(self._drop, i, False),
                lease_duration_s=s.lease_duration_s,
                renew_deadline_s=s.renew_deadline_s,
                retry_period_s=s.retry_period_s,
            )
            for i in range(s.shards)
        }
        self.order = sorted(
            self.electors, key=lambda i: hashlib.sha256(f"{s.identity}/{i}".encode()).digest()
        )
        self._free_since: dict[int, float] = {}  # shards seen without a holder, since (monotonic)
        # Shards being dropped: their turns in flight end in a thread of their own, so that
        # waiting for them never delays the renewal of the other shards' Leases.
        self._dropping: dict[int, threading.Thread] = {}

    def held(self) -> list[int]:
        return sorted(i for i, e in self.electors.items() if e.leading)

    def renewed_lately(self, shard: int) -> bool:
        return self.electors[shard].renewed_lately()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            stop.wait(self.retry_period_s)
        for i in self.held():
            self.electors[i].leading = False
            self.on_stopped(i)
            self.electors[i].release()
        for t in list(self._dropping.values()):
            t.join()

    def _drop(self, shard: int, release: bool) -> None:
        """Stop reconciling ``shard`` (then release its Lease) without holding up the loop."""

        def drop() -> None:
            self.on_stopped(shard)
            if release:
                self.electors[shard].release()

        t = threading.Thread(target=drop, name=f"shard {shard} stopping", daemon=True)
        self._dropping[shard] = t
        t.start()

    def step(self) -> None:
        for i in self.held():
            self.electors[i].step()
        self._hand_over_one()
        try:  # one read of every shard's Lease, not one per shard
            listed = self._api.list_namespaced_lease(self.namespace, _request_timeout=self.request_timeout_s)
        except Exception as e:  # the API server unreachable: nothing is known, nothing is taken
            log.warning("sharding: could not list the Leases in %s: %s", self.namespace, e)
            return
        leases = {lease.metadata.name: lease for lease in listed.items if lease.metadata}
        views = {
            i: e.observe(leases.get(e.name))
            for i, e in ((i, self.electors[i]) for i in self.order)
            if not e.leading and not (i in self._dropping and self._dropping[i].is_alive())
        }
        now = time.monotonic()
        for i, v in views.items():
            if v.holder is None:
                self._free_since.setdefault(i, now)
            else:
                self._free_since.pop(i, None)
        held, beyond_limit = len(self.held()), False
        for i, v in views.items():  # in this process's order
            if not v.expired:
                continue
            if held < self.limit:
                held += self.electors[i].step()
            elif not beyond_limit and (
                v.holder is not None or now - self._free_since[i] >= self.lease_duration_s
            ):
                beyond_limit = True
                held += self.electors[i].step()
        if held < self.limit and not any(v.expired for v in views.values()):
            self._ask_for_one(views)

    def _hand_over_one(self) -> None:
        """Above the limit: give one shard another process asked for."""
        held = self.held()
        if len(held) <= self.limit:
            return
        for i in held:
            e = self.electors[i]
            asker = e.wanted_by()
            if asker and asker != self.identity:
                log.info("sharding: handing shard %d over to %s", i, asker)
                e.leading = False
                self._drop(i, True)
                return

    def _ask_for_one(self, views: dict[int, LeaseView]) -> None:
        """Below the limit with nothing free: ask a process above the limit for one shard."""
        holding = collections.Counter(v.holder for v in views.values() if v.holder)
        for i, v in views.items():
            if v.holder and holding[v.holder] > self.limit:
                if v.wanted_by != self.identity:
                    self.electors[i].ask()
                return
