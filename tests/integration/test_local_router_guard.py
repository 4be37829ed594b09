"""LocalRouter's guards against the REAL Envoy: compare-and-swap, the rollback record in the
same runtime_modify call, and the route's lock file (items 3-5 on the local backend)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh_canary.core.weights import ALL_STABLE, Weights
from mesh_canary.localmesh.mesh import LocalMesh
from mesh_canary.routing.base import RollbackRecord, RouteOwned, WeightsMoved
from mesh_canary.routing.local import LocalRouter
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    local = LocalMesh("v1", "v2", latency_ms=1.0)
    try:
        local.start()
        yield local
    finally:
        local.stop()


def router(mesh: LocalMesh, lock_dir: Path) -> LocalRouter:
    return LocalRouter(mesh.admin_url, "v1", "v2", lock_dir=lock_dir)


def test_a_forward_write_compares_and_a_rollback_carries_its_record(mesh: LocalMesh, tmp_path: Path) -> None:
    r = router(mesh, tmp_path)
    r.set_weights(ALL_STABLE)
    r.write(Weights(50, 50), owner="run1", expected=ALL_STABLE)
    assert r.get_weights() == Weights(50, 50)
    router(mesh, tmp_path).set_weights(ALL_STABLE)  # a person, through the admin API
    with pytest.raises(WeightsMoved) as moved:
        r.write(Weights(20, 80), owner="run1", expected=Weights(50, 50))
    assert moved.value.live == ALL_STABLE and r.get_weights() == ALL_STABLE
    r.set_weights(Weights(50, 50))
    record = RollbackRecord("run1", "errorRate: 30% errors", ("errorRate",), 12.0)
    r.write(ALL_STABLE, owner="run1", rollback=record)
    assert r.get_weights() == ALL_STABLE
    assert r.recorded_rollback() == record


def test_the_route_lock_refuses_a_second_owner_and_dies_with_its_process(
    mesh: LocalMesh, tmp_path: Path
) -> None:
    first, second = router(mesh, tmp_path), router(mesh, tmp_path)
    first.claim("run-a", "models/scorer")
    first.claim("run-a", "models/scorer")  # holding it already: fine
    with pytest.raises(RouteOwned, match=r"already being rolled out by models/scorer \(run run-a"):
        second.claim("run-b", "models/scorer")
    first.release("run-a")
    second.claim("run-b", "models/scorer")
    second.release("run-b")

    # A run that is SIGKILLed holding the lock leaves no stale lock behind.
    code = (
        "import sys, time; from mesh_canary.routing.local import LocalRouter; "
        f"r = LocalRouter({mesh.admin_url!r}, 'v1', 'v2', lock_dir={str(tmp_path)!r}); "
        "r.claim('run-k', 'models/scorer'); print('held', flush=True); time.sleep(3600)"  # until SIGKILL
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RouteOwned, match="run-k"):
            router(mesh, tmp_path).claim("run-c", "models/scorer")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    taker = router(mesh, tmp_path)
    wait_for("the lock to be free", lambda: taker.claim("run-c", "models/scorer") is None, 10)
    taker.release("run-c")
