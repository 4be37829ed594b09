"""Where the dashboard reads rollouts: `mesh-canary run --state` files, or ModelRollouts
(and their Events) through the Kubernetes API: the same state the CLI reads. The dashboard
never writes it; its orders go through the controller, as `rollout pause` etc. do
(mesh_canary/kube/orders.py)."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from mesh_canary.core.engine import policy_fingerprint
from mesh_canary.core.model import Policy
from mesh_canary.kube.names import KIND
from mesh_canary.present.dashboard.sources import Entry

log = logging.getLogger(__name__)


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

    def objects(self) -> list[dict[str, Any]]:
        return self.client.list(self.all_ns)

    def read(self) -> list[Entry]:
        from mesh_canary.present.report import policy_of_resource

        out = []
        for obj in self.objects():
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
        from mesh_canary.kube.orders import annotation, order, refusal

        ns, name = entry.key.split("/", 1)
        problem = refusal(verb, name, entry.status)  # the rule `rollout VERB` applies
        if problem is not None:
            raise ValueError(problem)
        word, value = order(verb)
        client = copy.copy(self.client)  # the same API client, in the rollout's namespace
        client.namespace = ns
        client.annotate(name, annotation(word), value)
        return f"{verb} requested ({annotation(word)}={value}); the controller handles it at its next turn"


class WatchedRollouts(ModelRollouts):
    """The ModelRollouts a controller already watches: its informer's copies (no list call
    per read), their Events and orders through the controller's own API client."""

    def __init__(self, client: Any, objects: Callable[[], list[dict[str, Any]]]) -> None:
        from mesh_canary.kube.rollouts import RolloutClient

        self.client = RolloutClient(None, None, None, client=client)
        self.all_ns = True
        self._objects = objects

    def objects(self) -> list[dict[str, Any]]:
        return self._objects()


class MemoryStores:
    """The states a process keeps in memory (the demo's rollouts), by label."""

    def __init__(self, stores: Mapping[str, Any], policy: Policy) -> None:
        self.stores = stores  # label -> a MemoryStateStore
        self.policy = policy

    def read(self) -> list[Entry]:
        out = []
        for label, store in self.stores.items():
            doc = store.load()
            key, source = f"demo/{label}", f"the demo's {label} candidate"
            if doc is None:
                out.append(Entry(key, label, source, problem="not started yet", origin=self))
            else:
                out.append(
                    Entry(
                        key,
                        f"{doc.get('name')} ({label})",
                        source,
                        state=doc,
                        policy=self.policy,
                        origin=self,
                    )
                )
        return out

    def order(self, entry: Entry, verb: str) -> str:
        raise PermissionError("the demo takes no orders")


@contextlib.contextmanager
def serving(sources: Sequence[Any], address: tuple[str, int], allow_writes: bool = False) -> Iterator[str]:
    """A dashboard on ``address`` while the block runs; its URL."""
    import threading

    from mesh_canary.present.dashboard import Dashboard, DashboardServer, Poller

    poller = Poller(sources)
    server = DashboardServer(address, Dashboard(poller, allow_writes))
    poller.start()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        poller.stop()
