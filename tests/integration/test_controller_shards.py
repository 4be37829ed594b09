"""Sharding (`mesh-canary controller --shards`): three real controller processes share the
rollouts, one is killed (SIGKILL) and its rollouts go on under the others.

Real parts: three `mesh-canary controller` processes (the console script) against the
Kubernetes API stand-in over HTTP, which records every write with its User-Agent (each
controller sends its identity there), and a real HTTP server answering the Prometheus query
API with a healthy candidate (the metrics stand-in of the controller's process tests in
tests/faults/test_controller.py). Nothing of ours is faked.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes.client
import pytest

from mesh_canary.controller.settings import DEFAULT_LEASE_NAME, SHARD_LEASE_INFIX, shard_of
from mesh_canary.localmesh.prometheus import free_port
from tests.faults.test_controller import (
    MESH_CANARY,
    MR,
    NS,
    VS_RES,
    Cluster,
    bad_candidate,
    http_server,
    model_rollout,
)
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SHARDS, REPLICAS = 6, 3
# --lease-duration: a dead process's shards are free after this. Not shorter: on this shared
# 2-core machine the stand-in answers some calls only after seconds, and a holder that cannot
# renew within the renew deadline rightly gives its shard up (then it would move for no death).
# So: the defaults (15 s, renew deadline 10 s, retry period 2 s).
LEASE_S = 15
LEASES = ["--lease-duration", f"{LEASE_S}s", "--renew-deadline", "10s", "--retry-period", "2s"]
ROLLOUTS = [f"rollout-{i}" for i in range(9)]  # every one of the 6 shards gets 1 or 2 of them
AGENT = "mesh-canary-controller/"


class Controllers:
    """`mesh-canary controller --shards` processes, each named by its POD_NAME (its identity's prefix)."""

    def __init__(self, kube: KubeStandIn, prometheus: str, logs: pathlib.Path) -> None:
        self.kube, self.prometheus, self.logs = kube, prometheus, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.leases: Any = kubernetes.client.CoordinationV1Api(kube.api_client())

    def start(self, name: str) -> None:
        port = free_port()
        with (self.logs / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [
                    MESH_CANARY,
                    "controller",
                    "--kubeconfig",
                    str(self.kube.kubeconfig_path),
                    "--namespace",
                    NS,
                    "--metrics-addr",
                    f"127.0.0.1:{port}",
                    "--prometheus",
                    self.prometheus,
                    "--shards",
                    str(SHARDS),
                    "--replicas",
                    str(REPLICAS),
                    *LEASES,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "POD_NAME": name},
            )
        self.ports[name] = port

    def ready(self, name: str) -> bool:
        proc = self.procs[name]
        url = f"http://127.0.0.1:{self.ports[name]}/readyz"
        return proc.poll() is None and httpx.get(url, timeout=2).status_code == 200

    def holders(self) -> dict[int, str]:
        """Shard -> the POD_NAME of the process holding its Lease, for Leases held now."""
        out: dict[int, str] = {}
        prefix = DEFAULT_LEASE_NAME + SHARD_LEASE_INFIX
        for lease in self.leases.list_namespaced_lease(NS).items:
            holder = lease.spec.holder_identity if lease.spec else None
            if lease.metadata.name.startswith(prefix) and holder:
                out[int(lease.metadata.name[len(prefix) :])] = holder.rsplit("_", 1)[0]
        return out

    def spread(self) -> dict[str, int]:
        """How many shards each process holds (every shard held, or {})."""
        holders = self.holders()
        return dict(collections.Counter(holders.values())) if len(holders) == SHARDS else {}

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@contextlib.contextmanager
def controllers(kube: KubeStandIn, prometheus: str, logs: pathlib.Path) -> Iterator[Controllers]:
    c = Controllers(kube, prometheus, logs)
    try:
        yield c
    finally:
        c.stop_all()


Writes = list[tuple[int, str, str | None, str, str]]  # KubeStandIn.writers()


def writers(
    writes: Writes, name: str, kinds: tuple[str, ...] = ("virtualservices", "modelrollouts")
) -> list[str]:
    """The POD_NAMEs of the controllers that wrote rollout ``name``'s VirtualService or its
    ModelRollout (status included), oldest write first."""
    return [
        agent[len(AGENT) :].rsplit("_", 1)[0]
        for _, res, ns, obj, agent in writes
        if ns == NS and obj == name and agent.startswith(AGENT) and res.split("/")[0] in kinds
    ]


def vs_writers(writes: Writes, name: str) -> list[str]:
    return writers(writes, name, ("virtualservices",))


def statuses(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every rollout's status, in one list call (the stand-in serves three controllers already)."""
    listed = cluster.custom.list_namespaced_custom_object(*MR, NS, "modelrollouts")
    return {o["metadata"]["name"]: o.get("status") or {} for o in listed["items"]}


def runs(seq: list[str]) -> list[str]:
    """``seq`` with repeats collapsed: A A B B -> A B."""
    return [x for i, x in enumerate(seq) if i == 0 or seq[i - 1] != x]


def test_three_sharded_controllers_share_the_rollouts_and_take_over_a_killed_ones(
    kube_api: KubeStandIn, tmp_path: pathlib.Path
) -> None:
    cluster = Cluster(kube_api)
    with (
        http_server(bad_candidate({"1.0": (2000, 0), "2.0": (2000, 0)})) as (prom_url, _),
        controllers(kube_api, prom_url, tmp_path) as ctl,
    ):
        for name in ("ctl-0", "ctl-1", "ctl-2"):
            ctl.start(name)
        # Started together, they share: ceil(6 / 3) = 2 shards each.
        wait_for(
            "the shards spread 2/2/2", lambda: ctl.spread() == {"ctl-0": 2, "ctl-1": 2, "ctl-2": 2}, 90, 0.5
        )
        for name in ("ctl-0", "ctl-1", "ctl-2"):
            wait_for(f"{name} ready", functools.partial(ctl.ready, name), 30)
        holders = ctl.holders()
        owner = {name: holders[shard_of(NS, name, SHARDS)] for name in ROLLOUTS}
        assert {shard_of(NS, n, SHARDS) for n in ROLLOUTS} == set(range(SHARDS))  # so each process has some

        for name in ROLLOUTS:
            cluster.add_vs(name)
            cluster.add_rollout(
                model_rollout(
                    name,
                    # Ten steps of 3 s or more: far from done when one process is killed.
                    canary={
                        "steps": list(range(10, 101, 10)),
                        "minStepDuration": "3s",
                        "maxStepDuration": "90s",
                    },
                    # 3 s, not 1 s: the stand-in validates every write against the CRDs, for three controllers.
                    analysis={"interval": "3s"},
                )
            )
        wait_for(
            "every rollout on its first step",
            lambda: all((s.get("currentStep") or 0) >= 1 for s in statuses(cluster).values()),
            90,
            every_s=1.0,
        )
        # Each rollout is reconciled by the one process holding its shard, and only by it.
        for name in ROLLOUTS:
            assert set(writers(kube_api.writers(), name)) == {owner[name]}, name

        victim = "ctl-0"
        orphans = [n for n in ROLLOUTS if owner[n] == victim]
        assert orphans
        ctl.procs[victim].send_signal(signal.SIGKILL)
        ctl.procs[victim].wait(10)
        killed_at = time.monotonic()
        # Read after the kill: whatever the victim wrote last is in them.
        steps_at_kill = {n: cluster.status(n).get("currentStep") for n in orphans}
        writes_at_kill = {n: len(vs_writers(kube_api.writers(), n)) for n in orphans}

        # Its shards are taken over once their Leases expire (15 s; a bounded wait, no sleep).
        wait_for(
            "the killed process's shards held by the others",
            lambda: (s := ctl.spread()) and victim not in s and sum(s.values()) == SHARDS,
            LEASE_S + 60,  # the lease duration, plus the API stand-in's delays on a loaded machine
            every_s=1.0,
        )
        taken_s = time.monotonic() - killed_at
        new_owner = {n: ctl.holders()[shard_of(NS, n, SHARDS)] for n in orphans}
        assert victim not in new_owner.values()
        wait_for(
            "the killed process's rollouts a step further",
            lambda: all(
                (statuses(cluster)[n].get("currentStep") or 0) > (steps_at_kill[n] or 0) for n in orphans
            ),
            120,
            every_s=1.0,
        )
        moved = kube_api.writers()
        print(
            f"\nsharding: the killed process's shards held by others {taken_s:.1f}s after the SIGKILL "
            f"(lease duration {LEASE_S}s); its rollouts a step further after {time.monotonic() - killed_at:.1f}s"
        )

        # A replacement process gets its share back from the two holding more than two.
        ctl.start("ctl-3")
        wait_for(
            "the shards spread 2/2/2 again",
            lambda: ctl.spread() == {"ctl-1": 2, "ctl-2": 2, "ctl-3": 2},
            240,  # one shard per holder per retry period, each after its turns in flight: slow when loaded
            every_s=1.0,
        )
        handed_back = kube_api.writers()

    for name in orphans:
        # Taken over: further steps, written by the shard's new holder only after the kill...
        assert runs(writers(moved, name)) == [victim, new_owner[name]], name
        assert len(vs_writers(moved, name)) > writes_at_kill[name], name
        # ... and resumed, not restarted (which would put all traffic back on stable first):
        # the new holder's first write of the VirtualService still sends some to the candidate.
        takeover_rvs = [
            rv
            for rv, res, _, obj, agent in moved
            if obj == name and res == "virtualservices" and new_owner[name] in agent
        ]
        first = next(
            v
            for v in kube_api.stored(VS_RES, NS, name)
            if int(v["metadata"]["resourceVersion"]) == min(takeover_rvs)
        )
        assert first["spec"]["http"][0]["route"][1].get("weight", 0) > 0, name
    for name in ROLLOUTS:
        if name not in orphans:
            assert set(writers(moved, name)) == {owner[name]}, name  # nobody else touched it
        # Never two writers of one VirtualService at overlapping times, through the kill and
        # the hand-back: each process's writes are one unbroken run.
        agents = vs_writers(handed_back, name)
        assert sorted(runs(agents)) == sorted(set(agents)), name
