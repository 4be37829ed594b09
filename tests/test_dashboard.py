"""The dashboard's server over real HTTP: state files and ModelRollouts on the API stand-in,
orders only with --allow-writes (through the same annotation `rollout pause` writes), the
live update's ETag, and a read that hangs (the page still answers, and says so)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes.client
import pytest
from click.testing import CliRunner

from mesh_canary.cli import main
from mesh_canary.core import engine
from mesh_canary.kube.status import ANNOTATION_PAUSE
from mesh_canary.present.dashboard import Dashboard, DashboardServer, Entry, Poller, Source
from mesh_canary.present.dashboard.server import ORDER_HEADER
from mesh_canary.run.dashboard_sources import ModelRollouts, StateFiles
from tests.conftest import NS, make_policy, model_rollout
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

MR = ("mesh-canary.io", "v1alpha1")
ORDER = {ORDER_HEADER: "order"}


@contextlib.contextmanager
def serving(sources: list[Source], allow_writes: bool) -> Iterator[tuple[str, Poller]]:
    poller = Poller(sources, interval_s=0.2)
    server = DashboardServer(("127.0.0.1", 0), Dashboard(poller, allow_writes))
    poller.start()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.url, poller
    finally:
        server.shutdown()
        server.server_close()
        poller.stop()


def state_file(tmp_path: Path) -> tuple[Path, Any]:
    policy = make_policy()
    path = tmp_path / "state.json"
    path.write_text(json.dumps(engine.start(policy, 1_700_000_000.0).state.to_dict()))
    return path, policy


def test_a_state_file_is_listed_shown_and_followed(tmp_path: Path) -> None:
    path, policy = state_file(tmp_path)
    with serving([StateFiles([str(path), str(tmp_path / "later.json")], [policy])], False) as (url, poller):
        wait_for("a first read", lambda: poller.snapshot.read_at is not None)
        listing = httpx.get(url, timeout=10).text
        assert "fraud-scorer" in listing and "Progressing" in listing
        assert "no state in" in listing  # the file that does not exist yet
        page = httpx.get(url + "r/file/0", timeout=10)
        assert page.status_code == 200 and "Rollout fraud-scorer" in page.text and "<script>" in page.text
        assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere
        # The live update: unchanged content answers 304, a change answers 200 with the new page.
        first = httpx.get(url + "r/file/0/fragment", timeout=10)
        etag = first.headers["ETag"]
        assert (
            httpx.get(url + "r/file/0/fragment", headers={"If-None-Match": etag}, timeout=10).status_code
            == 304
        )
        doc = json.loads(path.read_text())
        doc["phase"], doc["weights"]["candidate"], doc["weights"]["stable"] = "Paused", 10, 90
        path.write_text(json.dumps(doc))
        changed = wait_for(
            "the change to show",
            lambda: (
                (
                    r := httpx.get(url + "r/file/0/fragment", headers={"If-None-Match": etag}, timeout=10)
                ).status_code
                == 200
                and r
            ),
        )
        assert "phase Paused" in changed.text
        api = httpx.get(url + "api/rollouts", timeout=10).json()
        assert [r["phase"] for r in api["rollouts"] if "phase" in r] == ["Paused"]
        # A state file's rollout belongs to its `run` process: no orders, even with writes off.
        refused = httpx.post(url + "api/r/file/0/pause", headers=ORDER, timeout=10)
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]


def test_orders_go_to_a_model_rollout_only_with_allow_writes(kube_api: KubeStandIn) -> None:
    client = kube_api.api_client()
    custom: Any = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(*MR, NS, "modelrollouts", model_rollout())
    policy = make_policy()
    status = {"phase": "Progressing", "rollout": engine.start(policy, 1_700_000_000.0).state.to_dict()}
    custom.patch_namespaced_custom_object_status(*MR, NS, "modelrollouts", "fraud-scorer", {"status": status})
    core: Any = kubernetes.client.CoreV1Api(client)
    core.create_namespaced_event(
        NS,
        {
            "metadata": {"name": "fraud-scorer.1", "namespace": NS},
            "involvedObject": {"kind": "ModelRollout", "name": "fraud-scorer", "namespace": NS},
            "reason": "StepAdvanced",
            "message": "step 2/3: 50% of traffic to 2.0",
            "type": "Normal",
        },
    )

    def source() -> ModelRollouts:
        return ModelRollouts(str(kube_api.kubeconfig_path), None, NS, False)

    def annotations() -> dict[str, str]:
        obj = custom.get_namespaced_custom_object(*MR, NS, "modelrollouts", "fraud-scorer")
        return dict(obj["metadata"].get("annotations") or {})

    key = f"{NS}/fraud-scorer"
    with serving([source()], allow_writes=False) as (url, poller):
        wait_for("a first read", lambda: poller.snapshot.get(key))
        page = httpx.get(url + f"r/{key}", timeout=10).text
        assert "step 2/3: 50% of traffic to 2.0" in page  # its Events
        assert 'data-verb="' not in page  # no buttons
        refused = httpx.post(url + f"api/r/{key}/pause", headers=ORDER, timeout=10)
        assert refused.status_code == 403 and ANNOTATION_PAUSE not in annotations()
    with serving([source()], allow_writes=True) as (url, poller):
        wait_for("a first read", lambda: poller.snapshot.get(key))
        assert 'data-verb="pause"' in httpx.get(url + f"r/{key}", timeout=10).text
        # Another site's form cannot send the header: refused.
        assert httpx.post(url + f"api/r/{key}/pause", timeout=10).status_code == 403
        assert httpx.post(url + f"api/r/{key}/explode", headers=ORDER, timeout=10).status_code == 404
        done = httpx.post(url + f"api/r/{key}/pause", headers=ORDER, timeout=10)
        assert done.status_code == 200, done.text
        # The same order `mesh-canary rollout pause` gives: true@<request id>.
        assert annotations()[ANNOTATION_PAUSE].startswith("true@")


class Hanging:
    """A source whose read never answers (an API server that accepted the connection)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def read(self) -> list[Entry]:
        self.release.wait(120)
        return []

    def order(self, entry: Entry, verb: str) -> str:
        raise PermissionError("no")


def test_a_read_that_hangs_leaves_the_page_answering_and_saying_so() -> None:
    hanging = Hanging()
    poller = Poller([hanging], interval_s=0.1)
    started = time.monotonic()
    poller.read_once(deadline_s=0.5)
    assert time.monotonic() - started < 30  # bounded, not forever
    assert "did not finish within" in poller.snapshot.problem
    poller.read_once(deadline_s=0.5)  # the hung read is still out: no second one piles up
    assert "has not answered" in poller.snapshot.problem
    hanging.release.set()


def test_bad_dashboard_arguments_are_one_sentence_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["dashboard", "--state", str(tmp_path / "s.json"), "--address", "nowhere"]
    )
    assert result.exit_code == 2 and "--address 'nowhere' is not HOST:PORT" in result.output


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_the_demo_serves_its_rollouts_from_memory() -> None:
    from mesh_canary.run.dashboard_sources import MemoryStores, serving
    from mesh_canary.run.stores import MemoryStateStore

    policy = make_policy()
    stores = {"healthy": MemoryStateStore(), "degraded": MemoryStateStore()}
    stores["healthy"].save(engine.start(policy, 1_700_000_000.0).state.to_dict())
    with serving([MemoryStores(stores, policy)], ("127.0.0.1", 0)) as url:
        listing = wait_for(
            "a read", lambda: (t := httpx.get(url, timeout=10).text) and "Progressing" in t and t
        )
        assert "fraud-scorer (healthy)" in listing and "not started yet" in listing
        assert "Rollout fraud-scorer" in httpx.get(url + "r/demo/healthy", timeout=10).text
