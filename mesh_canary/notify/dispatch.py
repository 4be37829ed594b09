"""Getting announcements out without ever being in the way.

Each receiver has its own bounded queue and, while that queue holds announcements, its own
worker thread (`BackgroundNotifier`; no thread while idle, so a controller with a thousand
quiet rollouts does not hold thousands of threads): `notify` returns at once, so no receiver can delay the loop (least of all a rollback, which the runner
writes before it announces anything), and a slow receiver cannot hold up the others. This is
the one layer that retries a notification (`Retrying`): a failed attempt is retried with
backoff until the receiver's total deadline; then it is counted as failed and logged, and the
next announcement gets its turn, so a receiver that recovers gets everything after. A full
queue drops its oldest announcement to take the new one, counted and logged (never
silently): what happens later always reaches a receiver that recovers.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mesh_canary.notify.base import DeliveryError, log
from mesh_canary.protocols import Announcement, Notifier

# (receiver kind, outcome): outcome is sent | failed | dropped. The controller counts them.
OutcomeHook = Callable[[str, str], None]
OUTCOMES = ("sent", "failed", "dropped")

QUEUE_SIZE = 100  # per receiver: far more than one rollout announces while a receiver is down


class Target(Protocol):
    """A receiver the dispatcher can retry: one attempt by a deadline (raises DeliveryError)."""

    kind: str
    timeout_s: float

    @property
    def label(self) -> str: ...

    def deliver(self, a: Announcement, deadline: float) -> bool: ...


@dataclass
class Counts:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, outcome: str) -> int:
        with self.lock:
            value = int(getattr(self, outcome)) + 1
            setattr(self, outcome, value)
            return value


class FanOutNotifier:
    def __init__(self, notifiers: Sequence[Notifier]) -> None:
        self.notifiers = list(notifiers)

    def notify(self, announcement: Announcement) -> None:
        for n in self.notifiers:
            try:
                n.notify(announcement)
            except Exception:  # one broken notifier must not silence the others
                log.exception("notifier %r failed", n)


class Retrying:
    """Delivers to one receiver, retrying failed attempts with doubling pauses until the
    receiver's total deadline (``target.timeout_s`` per announcement)."""

    def __init__(
        self,
        target: Target,
        counts: Counts | None = None,
        on_outcome: OutcomeHook | None = None,
        first_pause_s: float = 0.2,
        max_pause_s: float = 2.0,
    ) -> None:
        self.target = target
        self.counts = counts or Counts()
        self.on_outcome = on_outcome
        self.first_pause_s, self.max_pause_s = first_pause_s, max_pause_s

    def notify(self, announcement: Announcement) -> None:
        deadline = time.monotonic() + self.target.timeout_s
        pause, attempts = self.first_pause_s, 0
        while True:
            attempts += 1
            try:
                if self.target.deliver(announcement, deadline):
                    self._count("sent")
                return
            except DeliveryError as e:
                left = deadline - time.monotonic()
                if not e.retryable or left <= pause:
                    failed = self._count("failed")
                    log.warning(
                        "%s failed: %s; %s not delivered after %d attempt%s (%d failed so far)",
                        self.target.label,
                        e.reason,
                        announcement.kind,
                        attempts,
                        "" if attempts == 1 else "s",
                        failed,
                    )
                    return
            time.sleep(pause)
            pause = min(pause * 2, self.max_pause_s)

    def _count(self, outcome: str) -> int:
        value = self.counts.add(outcome)
        if self.on_outcome is not None:
            self.on_outcome(self.target.kind, outcome)
        return value


class BackgroundNotifier:
    """Queues announcements for a worker thread: `notify` returns at once. A full queue
    drops its oldest announcement, counts it (`dropped`) and says so in the log.

    The worker thread runs only while the queue holds something: started by the announcement
    that finds none running, ended when it finds the queue empty (at most one at a time, so a
    receiver gets its announcements in order).
    """

    def __init__(
        self,
        inner: Notifier,
        max_queue: int = 1000,
        *,
        name: str = "notifier",
        counts: Counts | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = name
        self.counts = counts or Counts()
        self.on_drop = on_drop
        self._queue: queue.Queue[Announcement | None] = queue.Queue(max_queue)
        self._lock = threading.Lock()  # guards _thread and _finished
        self._thread: threading.Thread | None = None  # the worker, while there is work
        self._finished = False  # the worker reached the stop: no worker any more

    @property
    def dropped(self) -> int:
        return self.counts.dropped

    def notify(self, announcement: Announcement) -> None:
        """Queues ``announcement``; when the queue is full, the oldest one queued makes room
        (later news wins: the latest state reaches the receiver once it recovers)."""
        while True:
            try:
                self._queue.put_nowait(announcement)
                self._wake()
                return
            except queue.Full:
                try:
                    oldest = self._queue.get_nowait()
                except queue.Empty:  # the worker just took one: room now
                    continue
            if oldest is None:  # closing: the stop stays last, this one is dropped
                self._queue.put_nowait(None)
                oldest = announcement
            self._dropped(oldest)
            if oldest is announcement:
                return

    def _dropped(self, announcement: Announcement) -> None:
        dropped = self.counts.add("dropped")
        if self.on_drop is not None:
            self.on_drop()
        log.warning(
            "notification queue of %s full; dropped %s: %s (%d dropped so far)",
            self.name,
            announcement.kind,
            announcement.message,
            dropped,
        )

    def _wake(self) -> None:
        """A worker for what is queued, unless one runs (it takes what was put before this)."""
        with self._lock:
            if self._thread is not None or self._finished:
                return
            self._thread = threading.Thread(target=self._work, name=f"notify-{self.name}", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:  # empty: this worker ends, and the next `notify` starts another
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    self._thread = None
                    return
                if item is None:
                    self._finished, self._thread = True, None
                    return
            try:
                self.inner.notify(item)
            except Exception:
                log.exception("notification failed")

    def close(self, timeout_s: float = 5.0) -> None:
        """Delivers what is queued (up to `timeout_s`), then stops the worker."""
        self.stop()
        self.join(timeout_s)

    def stop(self) -> None:
        """Asks the worker to stop once the queue before it is delivered (never blocks)."""
        try:
            self._queue.put_nowait(None)
            self._wake()
        except queue.Full:  # the worker is behind a full queue; it is a daemon and ends with us
            threading.Thread(target=self._stop_later, daemon=True).start()

    def _stop_later(self) -> None:
        self._queue.put(None)
        self._wake()

    def join(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until no worker runs (all queued delivered, or none was)."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            with self._lock:
                worker = self._thread
            if worker is None or worker is threading.current_thread():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            worker.join(left)


@dataclass
class Route:
    """One receiver: the events it takes (None: every event) and its queue."""

    label: str
    kind: str
    events: frozenset[str] | None
    queue: BackgroundNotifier
    deadline_s: float = 5.0  # how long one notification may take, retries included

    def takes(self, kind: str) -> bool:
        return self.events is None or kind in self.events


class Dispatcher:
    """Every announcement of a rollout to each receiver that takes its event, each receiver
    behind its own queue. `stats()` says what was sent, failed and dropped, per receiver."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)

    def notify(self, announcement: Announcement) -> None:
        for route in self.routes:
            if route.takes(announcement.kind):
                route.queue.notify(announcement)

    def close(self, timeout_s: float | None = None) -> None:
        """Delivers what is queued, all receivers at once, for at most `timeout_s` in total
        (default: the longest receiver deadline, so that a `run` about to exit still gets a
        rollback's page through a receiver's retries)."""
        for route in self.routes:
            route.queue.stop()
        if timeout_s is None:
            timeout_s = max((r.deadline_s for r in self.routes), default=0.0) + 1.0
        deadline = time.monotonic() + timeout_s
        for route in self.routes:
            route.queue.join(deadline - time.monotonic())

    def stats(self) -> dict[str, dict[str, int]]:
        return {r.label: {o: getattr(r.queue.counts, o) for o in OUTCOMES} for r in self.routes}

    @property
    def dropped(self) -> int:
        return sum(r.queue.dropped for r in self.routes)


def route(
    target: Target,
    events: Iterable[str] | None,
    on_outcome: OutcomeHook | None = None,
    max_queue: int = QUEUE_SIZE,
) -> Route:
    """A receiver that is retried, behind a queue of its own."""
    counts = Counts()
    hook = None if on_outcome is None else (lambda: on_outcome(target.kind, "dropped"))
    worker = BackgroundNotifier(
        Retrying(target, counts, on_outcome), max_queue, name=target.label, counts=counts, on_drop=hook
    )
    return Route(
        target.label, target.kind, None if events is None else frozenset(events), worker, target.timeout_s
    )


def plain_route(label: str, kind: str, notifier: Notifier, max_queue: int = QUEUE_SIZE) -> Route:
    """A receiver that does its own error handling (the log, Kubernetes Events), behind a queue."""
    return Route(label, kind, None, BackgroundNotifier(notifier, max_queue, name=label))


__all__ = [
    "OUTCOMES",
    "QUEUE_SIZE",
    "BackgroundNotifier",
    "Counts",
    "Dispatcher",
    "FanOutNotifier",
    "OutcomeHook",
    "Retrying",
    "Route",
    "Target",
    "plain_route",
    "route",
]
