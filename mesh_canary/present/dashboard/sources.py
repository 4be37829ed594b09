"""Where the dashboard reads rollouts: `run --state` files, or ModelRollouts (and their
Events) through the Kubernetes API. The same state the CLI reads; the dashboard never
writes it (orders go through the controller, as `rollout pause` etc. do).

Reads happen in a background poller with a total deadline per round; the web server only
serves the latest snapshot, so a slow API never holds a page (it shows how stale it is).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from mesh_canary.core.engine import policy_fingerprint
from mesh_canary.core.model import Policy
from mesh_canary.kube.names import KIND
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


class StateFiles:
    """`mesh-canary run --state FILE` files, each matched with the policy (``-f``) it runs
    by the state's policy fingerprint."""

    def __init__(self, paths: Sequence[str], policies: Sequence[Policy] = ()) -> None:
        self.paths = tuple(paths)
        self.policies = {policy_fingerprint(p): p for p in policies}

    def read(self) -> list[Entry]:
        from mesh_canary.run.stores import FileStateStore, StateFileError

        out = []
        for i, path in enumerate(self.paths):
            key = f"file/{i}"
            try:
                doc = FileStateStore(path).load()
            except StateFileError as e:
                out.append(Entry(key, path, path, problem=str(e), origin=self))
                continue
            if doc is None:
                why = f"no state in {path} yet (has the run started?)"
                out.append(Entry(key, path, path, problem=why, origin=self))
                continue
            policy = self.policies.get(str(doc.get("policyFingerprint") or ""))
            out.append(Entry(key, str(doc.get("name") or path), path, state=doc, policy=policy, origin=self))
        return out

    def order(self, entry: Entry, verb: str) -> str:
        raise PermissionError(
            f"{entry.source} belongs to its `mesh-canary run` process, which takes orders from its own "
            "terminal (Ctrl-C aborts it); the buttons steer ModelRollouts through the controller"
        )


class ModelRollouts:
    """ModelRollout resources in one namespace (or all) and their Events."""

    def __init__(
        self, kubeconfig: str | None, context: str | None, namespace: str | None, all_ns: bool
    ) -> None:
        from mesh_canary.kube.rollouts import RolloutClient

        self.client = RolloutClient(kubeconfig, context, namespace)
        self.all_ns = all_ns

    def read(self) -> list[Entry]:
        from mesh_canary.present.report import policy_of_resource

        out = []
        for obj in self.client.list(self.all_ns):
            meta = obj.get("metadata") or {}
            ns, name = str(meta.get("namespace") or self.client.namespace), str(meta.get("name") or "?")
            status = obj.get("status") or {}
            state = status.get("rollout") if isinstance(status.get("rollout"), Mapping) else None
            fingerprint = str((state or {}).get("policyFingerprint") or "")
            out.append(
                Entry(
                    key=f"{ns}/{name}",
                    name=name,
                    source=f"ModelRollout {ns}/{name}",
                    state=state,
                    policy=policy_of_resource(obj, fingerprint),
                    status=status,
                    events=tuple(self._events(ns, name)),
                    problem=""
                    if state
                    else f"no rollout recorded yet (phase {status.get('phase') or 'Pending'})",
                    writable=True,
                    origin=self,
                )
            )
        return out

    def _events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The resource's Events, newest first; none when they cannot be read (no RBAC)."""
        import kubernetes.client

        try:
            api = kubernetes.client.CoreV1Api(self.client.api.api_client)
            found: Any = api.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.kind={KIND},involvedObject.name={name}",
                _request_timeout=5,
            )
        except Exception as e:
            log.debug("cannot read the Events of %s/%s: %s", namespace, name, e)
            return []
        rows = []
        for ev in found.items or []:
            when = ev.last_timestamp or ev.event_time or ev.first_timestamp
            rows.append(
                {
                    "lastTimestamp": when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else "",
                    "type": ev.type,
                    "reason": ev.reason,
                    "count": ev.count,
                    "message": ev.message,
                }
            )
        return sorted(rows, key=lambda r: str(r["lastTimestamp"]), reverse=True)

    def order(self, entry: Entry, verb: str) -> str:
        from mesh_canary.kube.orders import annotation, order

        word, value = order(verb)
        ns, name = entry.key.split("/", 1)
        client = copy.copy(self.client)  # the same API client, in the rollout's namespace
        client.namespace = ns
        client.annotate(name, annotation(word), value)
        return f"{verb} requested ({annotation(word)}={value}); the controller handles it at its next turn"


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
