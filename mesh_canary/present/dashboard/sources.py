"""What the dashboard shows and how it reads it: an `Entry` per rollout, a `Snapshot` of
them all, and the `Poller` that reads every `Source` in the background with a total
deadline per round; the web server only serves the latest snapshot, so a slow API never
holds a page (it shows how stale it is). The sources themselves (`run --state` files,
ModelRollouts and their Events) do I/O and live with the drivers, in
mesh_canary/run/dashboard_sources.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh_canary.core.model import Policy
from mesh_canary.redact import redact

log = logging.getLogger(__name__)

READ_DEADLINE_S = 10.0  # a round of reads that takes longer leaves the snapshot stale


@dataclass(frozen=True)
class Entry:
    """One rollout as last read."""

    key: str  # in URLs: file/<i> or <namespace>/<name>
    name: str
    source: str  # the file, or "ModelRollout ns/name"
    state: Mapping[str, Any] | None = None  # the engine state (None: none yet)
    policy: Policy | None = None
    status: Mapping[str, Any] = field(default_factory=dict)  # a ModelRollout's status
    events: tuple[Mapping[str, Any], ...] = ()
    problem: str = ""  # why there is no state to show
    writable: bool = False  # orders can be given (a ModelRollout)
    origin: Source | None = field(default=None, compare=False, repr=False)  # takes its orders


@dataclass(frozen=True)
class Snapshot:
    entries: tuple[Entry, ...] = ()
    read_at: float | None = None  # wall clock of the last complete round
    problem: str = ""  # why the last round failed or is late

    def get(self, key: str) -> Entry | None:
        return next((e for e in self.entries if e.key == key), None)


class Source(Protocol):
    def read(self) -> list[Entry]:
        """Every rollout this source knows, read now (may raise; the poller reports it)."""
        ...

    def order(self, entry: Entry, verb: str) -> str:
        """Give the order ``verb`` to the rollout; one sentence saying what was done.
        PermissionError (403) when this source takes no orders."""
        ...


class Poller:
    """Reads every source every ``interval_s`` in a background thread; a round that takes
    longer than ``READ_DEADLINE_S`` leaves the last snapshot in place, marked late."""

    def __init__(
        self, sources: Sequence[Source], interval_s: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.sources = tuple(sources)
        self.interval_s = interval_s
        self.clock = clock
        self._snapshot = Snapshot()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round: threading.Thread | None = None

    @property
    def snapshot(self) -> Snapshot:
        with self._lock:
            return self._snapshot

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dashboard-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.read_once(deadline_s=READ_DEADLINE_S)
            self._stop.wait(max(self.interval_s - (time.monotonic() - started), 0.05))

    def read_once(self, deadline_s: float = READ_DEADLINE_S) -> None:
        """One round of reads, waited for at most ``deadline_s`` (a hung read is left behind)."""
        if self._round is not None and self._round.is_alive():
            self._publish(problem=f"the previous read has not answered for over {deadline_s:.0f}s")
            return
        result: dict[str, Any] = {}

        def work() -> None:
            entries: list[Entry] = []
            problems = []
            for source in self.sources:
                try:
                    entries += source.read()
                except Exception as e:
                    problems.append(redact(str(e)))
            result["entries"], result["problems"] = entries, problems

        self._round = threading.Thread(target=work, name="dashboard-read", daemon=True)
        self._round.start()
        self._round.join(deadline_s)
        if self._round.is_alive():
            self._publish(problem=f"reading the rollouts did not finish within {deadline_s:.0f}s")
            return
        self._publish(tuple(result["entries"]), "; ".join(result["problems"]), complete=True)

    def _publish(
        self, entries: tuple[Entry, ...] | None = None, problem: str = "", complete: bool = False
    ) -> None:
        with self._lock:
            old = self._snapshot
            self._snapshot = Snapshot(
                entries=old.entries if entries is None else entries,
                read_at=self.clock() if complete else old.read_at,
                problem=problem,
            )
            self._changed.notify_all()
