"""``mesh-canary collector serve``: the collector in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import gc
import signal
import threading
from types import FrameType

from mesh_canary.collector.server import LISTENING, Collector, Settings


def serve(settings: Settings, host: str, port: int) -> int:
    """Serve until SIGTERM/SIGINT; then stop cleanly (the store is closed, its WAL folded in)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with Collector(settings, host, port) as collector:
            # Everything loaded so far lives as long as the process: out of the collector's
            # way (a full collection no longer walks it), and young collections rarer (each
            # request makes a few dozen short-lived containers; none are kept in cycles).
            gc.freeze()
            gc.set_threshold(10_000, 20, 20)
            # Tests and the local mesh wait for this line (the port may have been 0).
            print(f"{LISTENING}{collector.url}", flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def serve_address(
    address: str,
    db_path: str,
    retention: str,
    request_timeout: str,
    max_body_bytes: int,
    max_connections: int,
    max_versions: int,
    max_classes: int,
) -> int:
    """The CLI's options, checked (BadInput: one sentence, exit 2), then ``serve``."""
    from mesh_canary.collector.store import Limits
    from mesh_canary.core.durations import parse_duration
    from mesh_canary.errors import BadInput

    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BadInput(f"--address {address!r} is not HOST:PORT (for example 0.0.0.0:8080)")
    durations = {}
    for name, text in (("--retention", retention), ("--request-timeout", request_timeout)):
        try:
            durations[name] = parse_duration(text)
        except ValueError as exc:
            raise BadInput(f"{name} {text!r} is not a duration: {exc}") from None
        if durations[name] <= 0:
            raise BadInput(f"{name} must be positive, not {text!r}")
    settings = Settings(
        db_path=db_path,
        retention_s=durations["--retention"],
        max_body_bytes=max_body_bytes,
        request_timeout_s=durations["--request-timeout"],
        max_connections=max_connections,
        limits=Limits(max_versions, max_classes),
        expire_every_s=min(60.0, durations["--retention"] / 10),
    )
    return serve(settings, host or "127.0.0.1", int(port_text))
