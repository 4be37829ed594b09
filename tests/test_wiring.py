"""The interrupt rule of `run` and `demo`: the first Ctrl-C rolls back, handlers come back."""

from __future__ import annotations

import os
import signal
import time

from mesh_canary.run.wiring import interrupts_roll_back


def test_first_interrupt_asks_for_a_rollback_and_handlers_are_restored() -> None:
    before = signal.getsignal(signal.SIGINT)
    asked: list[str] = []
    with interrupts_roll_back(lambda: asked.append("abort")):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while not asked and time.monotonic() < deadline:
            time.sleep(0.01)
    assert asked == ["abort"]  # no KeyboardInterrupt: the rollout gets to roll back first
    assert signal.getsignal(signal.SIGINT) is before
