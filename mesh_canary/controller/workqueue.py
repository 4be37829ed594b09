"""Due-time scheduling of rollouts, their worker threads, and slow/stuck accounting.

A heap of next-due times; a scheduler thread hands due rollouts to worker threads, never
two turns of one rollout at once. ``workers`` turns run at once; a turn that has run
``slow_after_s`` (a stuck outside call) stops holding its worker, so slow rollouts cannot
starve the others, up to ``max_workers`` threads in all; one running ``stuck_after_s`` is
what /livez reports. While not leading, nothing new starts; nor does a turn of a rollout
``owns`` says another process reconciles (``--shards``).

Two queues, each oldest due first, each with its own workers: turns of rollouts already
running (analyses, rollback retries, orders, deletions) on ``workers`` threads, and first turns
of rollouts not started yet on ``start_workers(workers)`` more. A burst of new rollouts never
holds a worker an analysis or a rollback waits for, and starts go on while analyses keep
every worker busy.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh_canary.controller.handler import Key, RolloutHandler, command_values, key_of, meta
from mesh_canary.controller.settings import ControllerSettings
from mesh_canary.protocols import Clock


def _is_start(h: RolloutHandler) -> bool:
    """Whether the turn would start a rollout that is not running yet: no runner, not deleted, and
    its status shows no rollout in progress (a resumed one may owe a rollback: not a start)."""
    return h.runner is None and not h.deleted and h.phase in ("Pending", "")


# One turn of one rollout: (when it is next due, None: only on a change; whether it failed).
Turn = Callable[[RolloutHandler], tuple[float | None, bool]]


def start_workers(workers: int) -> int:
    """Threads for first turns (starts) besides ``workers``: half as many, at least one."""
    return max(1, workers // 2)


@dataclass
class _InFlight:
    handler: RolloutHandler
    started: float  # time.monotonic()
    start: bool = False  # a first turn (counted against start_workers, not workers)


class WorkQueue:
    """The known rollouts (``handlers``, guarded by ``cond``), when each is due, and who runs now."""

    def __init__(
        self,
        settings: ControllerSettings,
        clock: Clock,
        turn: Turn,
        stopping: threading.Event,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.cond = threading.Condition()
        self.handlers: dict[Key, RolloutHandler] = {}
        self.leading = not settings.leader_elect
        # Whether this process reconciles the rollout now (a shard it holds); called under ``cond``.
        self.owns: Callable[[Key], bool] = lambda key: True
        self._turn = turn
        self._stopping = stopping
        # Due turns of started rollouts (and deletions), and first turns of new ones (`_is_start`).
        self._heap: list[tuple[float, int, int, Key]] = []
        self._starts: list[tuple[float, int, int, Key]] = []
        self._seq = itertools.count()
        self._inflight: dict[int, _InFlight] = {}  # by id(handler): turns running now
        self._carried: dict[float, float] = {}  # analysis interval -> last instant carried to

    # -- scheduling (callers hold ``cond``) ----------------------------------------------

    def schedule_locked(self, h: RolloutHandler, due: float) -> None:
        h.token += 1
        h.due = due
        heap = self._starts if _is_start(h) else self._heap
        heapq.heappush(heap, (due, next(self._seq), h.token, h.key))
        self.cond.notify_all()

    def kick_locked(self, h: RolloutHandler) -> None:
        """Due now (or again as soon as its running turn ends)."""
        if h.running:
            h.rerun = True
        else:
            self.schedule_locked(h, self.clock.now())

    def free_worker_locked(self, mono: float, start: bool = False) -> float | None:
        """0 if a due rollout may start now; else seconds until a busy worker turns slow (None: never).

        ``start``: for a first turn, whose workers (``start_workers``) are apart from the others.

        ``workers`` reconciles run at once; one that has run ``slow_after_s`` (a stuck outside
        call) stops counting, so slow rollouts cannot hold every worker: a due rollout waits
        behind another rollout's slow reconcile at most ``slow_after_s``. ``max_workers``
        caps the threads in all (then /livez reports the stuck ones).
        """
        if len(self._inflight) >= self.settings.thread_limit:
            return None
        ages = [mono - f.started for f in self._inflight.values() if f.start == start]
        busy = [age for age in ages if age < self.settings.slow_after_s]
        if len(busy) < (start_workers(self.settings.workers) if start else self.settings.workers):
            return 0.0
        return self.settings.slow_after_s - max(busy)

    # -- what the informer sees ---------------------------------------------------------

    def upsert(self, obj: dict[str, Any]) -> Key:
        """A resource as the informer sees it now: known from now on, due now if anything that matters changed."""
        key = key_of(obj)
        m = meta(obj)
        with self.cond:
            h = self.handlers.get(key)
            if h is None:
                h = RolloutHandler(
                    key=key, obj=obj, phase=str((obj.get("status") or {}).get("phase") or "Pending")
                )
                self.handlers[key] = h
                kick = True
            else:
                old = meta(h.obj)
                kick = (
                    h.deleted
                    or old.get("generation") != m.get("generation")
                    or old.get("uid") != m.get("uid")
                    or command_values(h.obj) != command_values(obj)
                    or (bool(m.get("deletionTimestamp")) and not old.get("deletionTimestamp"))
                )
                h.obj = obj
                h.deleted = False
                if h.runner is None:  # a follower's view of the phase, for the rollouts gauge
                    h.phase = str((obj.get("status") or {}).get("phase") or h.phase)
            if kick:
                self.kick_locked(h)
        return key

    def deleted(self, obj: dict[str, Any]) -> None:
        """The resource is gone: its next turn (due now) leaves its traffic on stable."""
        with self.cond:
            h = self.handlers.get(key_of(obj))
            if h is None:
                return
            h.obj = obj
            h.deleted = True
            self.kick_locked(h)

    def known(self, namespace: str | None) -> list[dict[str, Any]]:
        """The resources of ``namespace`` (None: all) believed alive."""
        with self.cond:
            return [
                h.obj
                for k, h in self.handlers.items()
                if not h.deleted and (namespace is None or k[0] == namespace)
            ]

    # -- the scheduler thread -----------------------------------------------------------

    def run(self) -> None:
        with self.cond:
            while not self._stopping.is_set():
                if not self.leading:
                    self.cond.wait(0.5)
                    continue
                self.cond.wait(max(self._dispatch_due_locked(), 0.01))

    def _dispatch_due_locked(self) -> float:
        """Start every due rollout a worker is free for, started rollouts' turns before new
        rollouts' first turns; returns how long to wait then."""
        now = self.clock.now()
        wait = 1.0
        for heap, start in ((self._heap, False), (self._starts, True)):
            while heap and heap[0][0] <= now:
                free_in = self.free_worker_locked(time.monotonic(), start)
                if free_in != 0.0:
                    # Due but no worker: wake when one turns slow, or when one finishes.
                    if free_in is not None:
                        wait = min(wait, free_in)
                    break
                _, _, token, key = heapq.heappop(heap)
                h = self.handlers.get(key)
                if h is None or h.removed or token != h.token or not self.owns(key):
                    continue
                self._dispatch_locked(h, start)
            else:
                if heap:
                    wait = min(wait, heap[0][0] - now)
        return wait

    def _dispatch_locked(self, h: RolloutHandler, start: bool = False) -> None:
        h.running, h.due = True, None
        # A daemon thread per turn, counted in `_inflight`: one stuck on an outside call
        # can neither hold a pool slot forever nor keep a stopping process alive.
        thread = threading.Thread(target=self._run_turn, args=(h,), name=f"rollout {h.ref}", daemon=True)
        self._inflight[id(h)] = _InFlight(h, time.monotonic(), start)
        thread.start()

    def _run_turn(self, h: RolloutHandler) -> None:
        next_due: float | None = None
        failed = True
        try:
            next_due, failed = self._turn(h)
        finally:
            with self.cond:
                h.running = False
                self._inflight.pop(id(h), None)
                if not h.removed and self.leading and self.owns(h.key) and not self._stopping.is_set():
                    if h.rerun:
                        h.rerun = False
                        self.schedule_locked(h, self.clock.now())
                    elif failed:
                        self.schedule_locked(h, self.clock.now() + self.settings.error_retry_s)
                    elif next_due is not None:
                        self.schedule_locked(h, next_due)
                self.cond.notify_all()
            if not failed:
                h.expect_read(next_due)  # so that its next read is in that instant's shared queries

    def overdue(self, at: float, interval_s: float) -> list[RolloutHandler]:
        """The waiting rollouts with this analysis interval whose analysis was due more than one
        interval before the grid instant ``at``: when they run before ``at + interval_s``, they
        read at ``at`` (`handler.analysis_instant`). Each instant is handed out once (to the
        first late analysis that reads there), so that one caller announces them all."""
        with self.cond:
            if self._carried.get(interval_s, -math.inf) >= at - 1e-6:
                return []
            self._carried[interval_s] = at
            found = []
            for due, _, token, key in self._heap:
                if due + interval_s >= at - 1e-6:
                    continue
                h = self.handlers.get(key)
                runner = h.runner if h is not None else None
                if (
                    h is not None
                    and runner is not None
                    and token == h.token
                    and not h.running
                    and not h.removed
                    and runner.policy.analysis.interval_s == interval_s
                ):
                    found.append(h)
            return found

    # -- what runs now ------------------------------------------------------------------

    def ages(self) -> list[tuple[str, float]]:
        """(rollout, seconds running) of every turn in flight."""
        now = time.monotonic()
        with self.cond:
            return [(f.handler.ref, now - f.started) for f in self._inflight.values()]

    def stuck(self) -> list[tuple[str, float]]:
        """Turns running longer than ``stuck_after_s`` (far past every outside call's deadline)."""
        return sorted((ref, age) for ref, age in self.ages() if age >= self.settings.stuck_after_s)

    def counts(self) -> tuple[int, int, int]:
        """Turns in flight: (normal, slow, stuck)."""
        ages = [age for _, age in self.ages()]
        stuck = sum(age >= self.settings.stuck_after_s for age in ages)
        slow = sum(self.settings.slow_after_s <= age < self.settings.stuck_after_s for age in ages)
        return len(ages) - slow - stuck, slow, stuck

    def drain(self, deadline: float) -> list[str]:
        """Wait (until ``deadline``, monotonic) for the turns in flight; the ones left."""
        with self.cond:
            while self._inflight and time.monotonic() < deadline:
                self.cond.wait(min(deadline - time.monotonic(), 0.5))
            return sorted(f.handler.ref for f in self._inflight.values())

    def set_leading(self, leading: bool, which: Callable[[Key], bool] | None = None) -> list[RolloutHandler]:
        """Start (every rollout due now) or stop leading; returns the handlers known then.

        On stopping, turns in flight finish, no new one starts. Not forever: a wedged one is
        what /livez reports, and it must not hold the caller (the election thread).
        ``which``: only these rollouts (a shard gained or lost: ``owns`` already says so).
        """
        with self.cond:
            if which is None:
                self.leading = leading
            handlers = [h for h in self.handlers.values() if which is None or which(h.key)]
            if leading:
                for h in handlers:
                    self.schedule_locked(h, self.clock.now())
            else:
                deadline = time.monotonic() + self.settings.stuck_after_s
                while any(h.running for h in handlers) and time.monotonic() < deadline:
                    self.cond.wait(0.2)
            self.cond.notify_all()
            return handlers

    def live(self) -> list[RolloutHandler]:
        with self.cond:
            return [h for h in self.handlers.values() if not h.removed]
