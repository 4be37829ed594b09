"""Clocks: real time for live rollouts, virtual time for simulation and tests."""

from __future__ import annotations

import threading
import time


class SystemClock:
    """Wall-clock seconds; `sleep` can be cut short by `wake` (used on shutdown)."""

    def __init__(self) -> None:
        self._wake = threading.Event()

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()  # woken early: later sleeps must sleep again

    def wake(self) -> None:
        self._wake.set()


class VirtualClock:
    """Time that moves only when told to: sleeping advances it instantly."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self._now += max(seconds, 0.0)
