"""The controller's parts on their own (no threads, no API server): settings, the work queue,
admission, the probe server, and the status store's explicit inputs."""

from __future__ import annotations

import dataclasses
import threading
import time
import types
from collections.abc import Iterator
from typing import Any, cast

import httpx
import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from mesh_canary.controller import ControllerSettings, MetricsAddress, workqueue
from mesh_canary.controller.admission import Admission
from mesh_canary.controller.handler import RolloutHandler
from mesh_canary.controller.health import HealthServer
from mesh_canary.controller.metrics import ControllerMetrics, TimedSource
from mesh_canary.controller.workqueue import WorkQueue, _InFlight
from mesh_canary.core import engine
from mesh_canary.core.policy import PolicyError
from mesh_canary.kube.errors import KubeError
from mesh_canary.kube.status import KubeStatusStore, StatusFacts
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from tests.test_engine import make_policy

T0 = 1_700_000_000.0

# --------------------------------------------------------------------------- settings


def test_settings_are_one_frozen_object_checked_when_built() -> None:
    s = ControllerSettings(namespaces=["a,b", " a ", "c"], prometheus_url="http://u:pw@prom:9090/")
    assert s.namespaces == ("a", "b", "c") == s.watched
    assert [a.url for a in s.allowed_metrics] == ["http://u:pw@prom:9090"]
    assert str(s.allowed_metrics[0]) != s.allowed_metrics[0].url  # the password never printed
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 9  # type: ignore[misc]
    with pytest.raises(ValueError, match="workers >= 1"):
        ControllerSettings(workers=0)
    with pytest.raises(ValueError, match="slow-after < stuck-after"):
        ControllerSettings(slow_after_s=10, stuck_after_s=5)
    with pytest.raises(ValueError, match="metrics-addr"):
        ControllerSettings(metrics_addr="nowhere")
    with pytest.raises(ValueError, match="not an http"):
        ControllerSettings(allowed_metrics_addresses=["ftp://x"])


def test_settings_defaults_the_controller_relied_on() -> None:
    s = ControllerSettings(workers=3)
    assert s.namespaces == () and s.thread_limit == 12
    assert [a.url for a in s.allowed_metrics] == ["http://prometheus.istio-system:9090"]
    assert ControllerSettings(workers=3, max_workers=2).thread_limit == 3
    assert ControllerSettings(namespaces="x", lease_namespace=None).lease_namespace_or_default() in ("x",)
    assert s.identity != ControllerSettings().identity  # unique per process start


# --------------------------------------------------------------------------- admission


def resource(namespace: str = "models", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "fraud-scorer", "namespace": namespace}, "spec": spec}


def test_admission_keeps_routes_in_the_namespace_and_metrics_to_the_configured_servers() -> None:
    policy = make_policy()
    admission = Admission(ControllerSettings(prometheus_url="http://prom:9090"))
    admission.admit(resource(), policy)
    with pytest.raises(PolicyError) as caught:
        admission.admit(resource("elsewhere", metrics={"address": "http://evil:9090"}), policy)
    assert [p.path for p in caught.value.problems] == [
        "spec.virtualService.namespace",
        "spec.metrics.address",
    ]
    assert admission.metrics_url(policy) == "http://prom:9090"
    assert not admission.routes_allowed("elsewhere", policy)
    assert Admission(ControllerSettings(allow_cross_namespace=True)).routes_allowed("elsewhere", policy)


# --------------------------------------------------------------------------- work queue


def queue(**settings: Any) -> tuple[WorkQueue, VirtualClock]:
    clock = VirtualClock(T0)
    return WorkQueue(ControllerSettings(**settings), clock, lambda h: (None, False), threading.Event()), clock


def rollout_obj(generation: int = 1, **annotations: str) -> dict[str, Any]:
    meta = {"name": "a", "namespace": "ns", "uid": "u1", "generation": generation, "annotations": annotations}
    return {"metadata": meta, "status": {"phase": "Progressing"}}


def test_the_queue_kicks_a_rollout_only_when_what_matters_changed() -> None:
    q, _ = queue()
    key = q.upsert(rollout_obj())
    h = q.handlers[key]
    assert key == ("ns", "a") and h.phase == "Progressing" and h.token == 1
    q.upsert(rollout_obj())  # a status write of ours: nothing to do
    assert h.token == 1
    q.upsert(rollout_obj(generation=2))
    q.upsert(rollout_obj(generation=2, **{"mesh-canary.io/abort": "r1"}))
    assert h.token == 3
    h.running = True
    q.deleted(rollout_obj(generation=2))
    assert h.deleted and h.rerun and h.token == 3  # runs again as soon as its turn ends
    assert q.known("ns") == [] and q.known(None) == []


def in_flight(q: WorkQueue, name: str, started: float) -> None:
    """A turn of rollout ``name`` running since ``started`` (monotonic), as the scheduler records it."""
    h = RolloutHandler(key=("ns", name), obj=rollout_obj())
    q._inflight[id(h)] = _InFlight(h, started)


def test_a_slow_turn_stops_holding_its_worker_up_to_the_thread_limit() -> None:
    q, _ = queue(workers=1, max_workers=2, slow_after_s=5.0, stuck_after_s=60.0)
    with q.cond:
        assert q.free_worker_locked(100.0) == 0.0
        in_flight(q, "a", 100.0)
        assert q.free_worker_locked(101.0) == pytest.approx(4.0)  # busy: free once it turns slow
        assert q.free_worker_locked(106.0) == 0.0  # slow now: no longer holds the worker
        in_flight(q, "b", 106.0)
        assert q.free_worker_locked(107.0) is None  # two threads: the limit


def test_turns_in_flight_are_counted_normal_slow_and_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    q, _ = queue(slow_after_s=5.0, stuck_after_s=60.0)
    for name, started in (("a", 999.0), ("b", 990.0), ("c", 900.0)):
        in_flight(q, name, started)
    monkeypatch.setattr(workqueue.time, "monotonic", lambda: 1000.0)  # type: ignore[attr-defined]
    assert q.counts() == (1, 1, 1)
    assert q.stuck() == [("ns/c", 100.0)]
    metrics = ControllerMetrics()
    metrics.set_in_flight(*q.counts())
    metrics.set_phases(["Progressing", "Progressing", "Invalid"])
    text = metrics.exposition().decode()
    assert 'mesh_canary_reconciles_in_flight{state="stuck"} 1.0' in text
    assert 'mesh_canary_rollouts{phase="Progressing"} 2.0' in text
    assert 'mesh_canary_rollouts{phase="Succeeded"} 0.0' in text


# --------------------------------------------------------------------------- probe server


def test_the_probe_server_asks_its_callables() -> None:
    live = [True]
    server = HealthServer(
        "127.0.0.1:0",
        liveness=lambda: (live[0], "ok" if live[0] else "stuck"),
        readiness=lambda: (False, "not the leader"),
        metrics=lambda: b"m 1\n",
    )
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/livez").status_code == 200
        live[0] = False
        assert (httpx.get(f"{base}/livez").status_code, httpx.get(f"{base}/livez").text) == (503, "stuck")
        assert httpx.get(f"{base}/readyz").status_code == 503
        assert httpx.get(f"{base}/metrics").text == "m 1\n"
        assert httpx.get(f"{base}/nope").status_code == 404
    finally:
        server.stop()


# --------------------------------------------------------------------------- the status store's inputs


class FakeCustomObjects:
    """The two calls KubeStatusStore makes; ``fail`` holds statuses to answer first."""

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        self.obj: dict[str, Any] = {"metadata": {"name": "a"}, "status": status or {}}
        self.patches: list[dict[str, Any]] = []
        self.fail: list[int] = []

    def get_namespaced_custom_object(self, *args: Any, **kw: Any) -> dict[str, Any]:
        return dict(self.obj)

    def patch_namespaced_custom_object_status(self, *args: Any, **kw: Any) -> dict[str, Any]:
        if self.fail:
            raise ApiException(status=self.fail.pop(0), reason="Nope")
        patch = args[5]["status"]
        self.patches.append(patch)
        self.obj["status"] = merged(self.obj["status"], patch)
        return dict(self.obj)


def merged(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch."""
    out = dict(old)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merged(out[k], v)
        else:
            out[k] = v
    return out


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCustomObjects]:
    fake = FakeCustomObjects({"handledCommands": {"abort": "r0"}})
    monkeypatch.setattr(kubernetes.client, "CustomObjectsApi", lambda client: fake)
    yield fake


def store_with(facts: list[StatusFacts], fake: FakeCustomObjects, **kw: Any) -> KubeStatusStore:
    return KubeStatusStore(
        kubernetes.client.ApiClient(),
        "ns",
        "a",
        facts=lambda: facts[-1],
        status=fake.obj["status"],
        clock=lambda: T0,
        sleep=lambda s: None,
        **kw,
    )


def test_the_store_takes_its_facts_when_it_writes_not_from_assignments(fake_api: FakeCustomObjects) -> None:
    policy = make_policy()
    facts = [StatusFacts(policy=policy, generation=3, applied_spec={"k": 1})]
    store = store_with(facts, fake_api)
    assert store.handled("abort") == "r0"  # from the status it was given
    store.mark_handled("pause", "true@r1")
    store.save(engine.start(policy, T0).state.to_dict())  # as the runner calls it: no arguments
    written = fake_api.obj["status"]
    assert written["observedGeneration"] == 3 and written["appliedSpec"] == {"k": 1}
    assert written["handledCommands"] == {"abort": "r0", "pause": "true@r1"}
    assert store.status == written
    facts.append(dataclasses.replace(facts[-1], generation=4, problems=("spec.x: bad",)))
    store.write(None)
    policy_valid = [c for c in fake_api.obj["status"]["conditions"] if c["type"] == "PolicyValid"]
    assert policy_valid[0]["status"] == "False" and "spec.x: bad" in policy_valid[0]["message"]
    with pytest.raises(AttributeError):
        store.status = {}  # type: ignore[misc]


def test_the_store_retries_only_what_may_work_and_raises_kube_error(fake_api: FakeCustomObjects) -> None:
    store = store_with([StatusFacts(generation=1)], fake_api, attempts=3)
    fake_api.fail = [503, 409]
    store.write(None)
    assert store.writes == 1
    fake_api.fail = [403]
    store.mark_handled("abort", "r9")
    with pytest.raises(KubeError, match="could not write the status of ModelRollout ns/a: HTTP 403") as e:
        store.write(None)
    assert e.value.status == 403 and not e.value.transient
    fake_api.fail = [503, 503, 503]
    with pytest.raises(KubeError, match="after 3 attempts: HTTP 503: Nope"):
        store.write(None)
    fake_api.fail = [404]
    with pytest.raises(KubeError, match="no longer exists") as gone:
        store.write(None)
    assert gone.value.not_found


def test_metrics_address_parsing_is_unchanged() -> None:
    assert MetricsAddress.parse("https://prom/").key == ("https", "prom", 443, "")


def test_started_rollouts_turns_never_wait_behind_new_starts_and_starts_go_on() -> None:
    """A burst of new rollouts never holds the worker an analysis or a rollback retry of a
    started one needs (starts have workers of their own), and starts go on while analyses
    keep every worker busy."""
    ran: list[str] = []

    def turn(h: RolloutHandler) -> tuple[float | None, bool]:
        ran.append(h.key[1])
        return None, False

    clock = VirtualClock(T0)
    q = WorkQueue(ControllerSettings(workers=1), clock, turn, threading.Event())
    assert workqueue.start_workers(1) == 1 and workqueue.start_workers(4) == 2

    def obj(name: str, phase: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ns", "uid": name}, "status": {"phase": phase}}

    for i in range(3):  # new rollouts, due first
        q.upsert(obj(f"new-{i}", "Pending"))
    running = q.handlers[q.upsert(obj("running", "Progressing"))]
    running.runner = cast(RolloutRunner, types.SimpleNamespace(state=None))  # started here
    clock.sleep(5)
    with q.cond:
        q.schedule_locked(running, clock.now())  # its analysis, due after every new one
    clock.sleep(1)
    # In progress but started by another process (no runner here): it may owe a rollback retry,
    # so it is not a start either.
    q.upsert(obj("resumed", "Progressing"))
    clock.sleep(5)
    at_once = []
    with q.cond:
        for _ in range(3):  # one worker and one start worker: one turn of each lane at a time
            q._dispatch_due_locked()
            at_once.append(sorted(f.handler.key[1] for f in q._inflight.values()))
            q.drain(time.monotonic() + 10)
    assert at_once == [["new-0", "running"], ["new-1", "resumed"], ["new-2"]]
    assert sorted(ran) == ["new-0", "new-1", "new-2", "resumed", "running"]


def test_dropping_a_runner_closes_its_metrics_source_once() -> None:
    """A restarted or finished rollout gives its Prometheus client back (a shared one loses a user)."""
    closed: list[str] = []

    class Source:
        def read(self, since: float, now: float) -> Any:
            raise AssertionError("not read")

        def close(self) -> None:
            closed.append("closed")

    h = RolloutHandler(key=("ns", "a"), obj=rollout_obj())
    h.runner = cast(RolloutRunner, types.SimpleNamespace(metrics=TimedSource(Source(), h.stopwatch)))
    h.drop_runner()
    h.drop_runner()
    assert closed == ["closed"] and h.runner is None


def test_a_turn_checks_the_policy_only_when_its_document_changed() -> None:
    """Checking a policy costs a turn's CPU; an unchanged document reuses the answer (the same
    Policy object), a changed one is checked again, and an invalid one stays invalid."""
    from mesh_canary.controller.reconcile import Reconciler
    from tests.conftest import model_rollout

    unused = cast(Any, None)
    reconciler = Reconciler(
        unused,
        backend=unused,
        admission=Admission(ControllerSettings()),
        finalizer=unused,
        metrics=unused,
        clock=VirtualClock(T0),
        judge=None,
        lock=threading.Condition(),
        request_timeout_s=1.0,
        registry=unused,
    )
    doc = model_rollout()
    doc["metadata"].update(uid="u1", generation=1, resourceVersion="7")
    h = RolloutHandler(("ns", "fraud-scorer"), doc)
    first = reconciler._valid_policy(h, doc)
    assert first is not None
    doc["metadata"]["resourceVersion"] = "8"  # a status write: the document is the same
    assert reconciler._valid_policy(h, doc) is first
    doc["spec"]["candidate"]["version"] = "3.0"
    doc["metadata"]["generation"] = 2
    second = reconciler._valid_policy(h, doc)
    assert second is not None and second is not first and second.candidate.version == "3.0"
    doc["spec"]["analysis"]["interval"] = "soon"
    doc["metadata"]["generation"] = 3
    assert reconciler._valid_policy(h, doc) is None
    assert reconciler._valid_policy(h, doc) is None
    assert h.facts.problems and "interval" in " ".join(h.facts.problems)


def test_late_analyses_are_handed_to_the_first_late_reader_once_per_instant() -> None:
    """An analysis more than an interval late reads at the last grid instant; the queue names
    every other rollout that will read there too (due more than an interval before it, waiting,
    same interval), once per instant, so the first late reader announces them all."""
    q, _ = queue()
    runner = cast(Any, types.SimpleNamespace(policy=make_policy()))
    interval = make_policy().analysis.interval_s
    at = 1000 * interval

    def waiting(name: str, due: float, **extra: Any) -> RolloutHandler:
        h = RolloutHandler(key=("ns", name), obj=rollout_obj(), runner=runner, **extra)
        q.handlers[h.key] = h
        with q.cond:
            q.schedule_locked(h, due)
        return h

    late = [waiting("late-1", at - 3 * interval), waiting("late-2", at - 1.5 * interval)]
    waiting("on-time", at - interval)  # reads at its own instant (at most one interval late)
    waiting("running", at - 3 * interval, running=True)
    other = RolloutHandler(
        key=("ns", "slower"),
        obj=rollout_obj(),
        runner=cast(
            Any,
            types.SimpleNamespace(
                policy=types.SimpleNamespace(analysis=types.SimpleNamespace(interval_s=60.0))
            ),
        ),
    )
    q.handlers[other.key] = other
    with q.cond:
        q.schedule_locked(other, at - 3 * interval)
    assert sorted(h.key[1] for h in q.overdue(at, interval)) == [h.key[1] for h in late]
    assert q.overdue(at, interval) == []  # handed out once
    assert q.overdue(at - interval, interval) == []  # never an older instant
    assert sorted(h.key[1] for h in q.overdue(at + interval, interval)) == ["late-1", "late-2", "on-time"]
