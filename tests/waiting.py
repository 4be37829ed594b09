"""Polling for a condition in tests that drive real processes (controller, Envoy, Prometheus)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, fn: Callable[[], Any], timeout_s: float = 20.0, every_s: float = 0.1) -> Any:
    """The first truthy value of ``fn()`` (errors count as not yet), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = fn()
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
