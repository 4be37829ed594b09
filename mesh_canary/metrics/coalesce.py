"""One Prometheus query per metric family per tick, shared by every rollout that asks it.

The controller lines analysis times up on a grid (``grid_floor``/``grid_ceil``: multiples of
the analysis interval since the epoch), so rollouts with the same interval read at the same
instant. Before a tick, each rollout tells the coalescer what it will ask (``expect``: its
`BatchSpec` per family, at that instant, over its window). At the tick, the first rollout
that asks for a (Prometheus, family shape, instant, window) sends ONE query for every rollout
expected there (`promql.render_batch`); the others wait for its answer, within their own
read deadline, and each takes its own series (`promql.split_batch`): exactly the answer its
own query would have had. A batch that fails (an error answer, too large, unreachable, no
answer within the first asker's deadline) is never a pass: each rollout falls back to its own
query with the time it has left (none left: the read says Prometheus was too slow).

A rollout that was not expected (a command moved its tick, its step just changed) sends its
own query, as do custom checks and a policy whose stable and candidate live on two hosts.
Nothing here touches the network: the caller's ``send`` does (`PrometheusMetricsSource`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mesh_canary.metrics.promql import BatchIndex, BatchSpec, index_batch, render_batch, split_batch

__all__ = ["QueryCoalescer", "grid_ceil", "grid_floor", "on_grid"]

_EPS = 1e-6
KEEP_S = 120.0  # expectations and answers this much older than the newest instant asked are dropped

# (Prometheus address, analysis instant, the spec's shape)
BatchKey = tuple[str, float, tuple[Any, ...]]
# send(promql, deadline) -> (resultType, result); raises when the query got no usable answer.
Send = Callable[[str, float], tuple[str, Any]]


def grid_floor(t: float, interval_s: float) -> float:
    """The last multiple of ``interval_s`` (seconds since the epoch) at or before ``t``."""
    return math.floor(t / interval_s + _EPS) * interval_s


def grid_ceil(t: float, interval_s: float) -> float:
    """The first multiple of ``interval_s`` at or after ``t``."""
    return math.ceil(t / interval_s - _EPS) * interval_s


def on_grid(t: float, interval_s: float) -> bool:
    return abs(t - round(t / interval_s) * interval_s) < _EPS * max(interval_s, 1.0)


@dataclass
class _Batch:
    specs: dict[int, BatchSpec]  # by member id
    left: set[int]  # members that have not taken their part yet
    done: threading.Event = field(default_factory=threading.Event)
    index: BatchIndex | None = None
    failed: bool = False


class QueryCoalescer:
    """Shares batched instant queries between the rollouts of one controller (thread-safe).

    ``count(family, batched)`` is what the sources sharing it call once per query they send
    (the controller's ``mesh_canary_prometheus_queries_total``).
    """

    def __init__(self, count: Callable[[str, bool], None] = lambda family, batched: None) -> None:
        self.count = count
        self._lock = threading.Lock()
        self._expected: dict[BatchKey, dict[int, BatchSpec]] = {}
        self._by_member: dict[int, set[BatchKey]] = {}
        self._batches: dict[BatchKey, _Batch] = {}

    def expect(self, member: int, url: str, at: float, specs: Iterable[BatchSpec]) -> None:
        """``member`` will read at ``at`` with these specs (its earlier expectations are dropped)."""
        with self._lock:
            self._forget_locked(member)
            keys = set()
            for spec in specs:
                key = (url, at, spec.shape)
                self._expected.setdefault(key, {})[member] = spec
                keys.add(key)
            self._by_member[member] = keys
            self._purge_locked(at)

    def forget(self, member: int) -> None:
        """``member`` reads no more (its rollout ended or was deleted)."""
        with self._lock:
            self._forget_locked(member)

    def take(
        self, member: int, url: str, at: float, spec: BatchSpec, deadline: float, send: Send
    ) -> list[dict[str, Any]] | None:
        """``spec``'s own instant vector from the shared query; None: send your own query.

        None when ``member`` was not expected here, when no other rollout was (one query
        either way), or when the batch failed. Waits at most until ``deadline`` (monotonic).
        """
        key = (url, at, spec.shape)
        with self._lock:
            batch = self._batches.get(key)
            leader = batch is None
            if batch is None:
                members = self._expected.pop(key, {})
                if member not in members or len(members) < 2:
                    if members:
                        self._expected[key] = members
                    return None
                batch = self._batches[key] = _Batch(members, set(members))
                self._purge_locked(at)
            elif member not in batch.left:
                return None
        try:
            return self._part(batch, leader, spec, deadline, send)
        finally:
            with self._lock:
                batch.left.discard(member)
                if not batch.left and self._batches.get(key) is batch:
                    del self._batches[key]

    @staticmethod
    def _part(
        batch: _Batch, leader: bool, spec: BatchSpec, deadline: float, send: Send
    ) -> list[dict[str, Any]] | None:
        if leader:
            try:
                result_type, result = send(render_batch(list(batch.specs.values())), deadline)
                batch.index = index_batch(spec, result_type, result)
            except Exception:
                batch.index = None
            finally:
                batch.failed = batch.index is None
                batch.done.set()
        elif not batch.done.wait(max(deadline - time.monotonic(), 0.0)):
            return None  # the batch is slower than this read may wait: its own query says so
        if batch.failed or batch.index is None:
            return None
        return split_batch(batch.index, spec)

    def _forget_locked(self, member: int) -> None:
        for key in self._by_member.pop(member, ()):
            members = self._expected.get(key)
            if members is not None:
                members.pop(member, None)
                if not members:
                    del self._expected[key]

    def _purge_locked(self, at: float) -> None:
        """Drop what belongs to instants long past (a rollout that never asked, an old answer)."""
        old = at - KEEP_S
        for table in (self._expected, self._batches):
            for key in [k for k in table if k[1] < old]:
                del table[key]
