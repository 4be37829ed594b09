"""`ShardElector` (``--shards``) against the API stand-in's Leases, through the official client.

Two electors in this process, each in its own thread as in the controller; the callbacks
record when each starts and stops owning a shard, so the test can check that no shard is
owned by two at once. Short Lease timings (6 s); every wait is for a condition, bounded.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from mesh_canary.cli import main as cli_main
from mesh_canary.controller.leader import ShardElector
from mesh_canary.controller.settings import ControllerSettings
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

SHARDS = 4


class Owners:
    """Who owns which shard, from the electors' callbacks; fails on a second owner."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.owner: dict[int, str] = {}
        self.overlaps: list[tuple[int, str, str]] = []
        self.handed: list[tuple[int, str]] = []  # (shard, who stopped owning it)

    def started(self, who: str, shard: int) -> None:
        with self.lock:
            if shard in self.owner:
                self.overlaps.append((shard, self.owner[shard], who))
            self.owner[shard] = who

    def stopped(self, who: str, shard: int) -> None:
        with self.lock:
            if self.owner.get(shard) == who:
                del self.owner[shard]
            self.handed.append((shard, who))

    def count(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for who in self.owner.values():
                out[who] = out.get(who, 0) + 1
            return out


@contextlib.contextmanager
def elector(kube: KubeStandIn, who: str, owners: Owners) -> Iterator[ShardElector]:
    settings = ControllerSettings(
        namespaces="models",
        identity=who,
        shards=SHARDS,
        replicas=2,
        lease_duration_s=6,
        renew_deadline_s=4.0,
        retry_period_s=0.5,
    )
    e = ShardElector(
        kube.api_client(),
        settings,
        lambda shard: owners.started(who, shard),
        lambda shard: owners.stopped(who, shard),
    )
    stop = threading.Event()
    thread = threading.Thread(target=e.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield e
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive()


def test_a_lone_process_holds_every_shard_hands_half_over_and_takes_them_back(kube_api: KubeStandIn) -> None:
    owners = Owners()
    with elector(kube_api, "a", owners) as a:
        # Alone, it takes its limit (ceil(4 / 2) = 2) at once, and the rest once they stayed
        # free for a lease duration: no shard is left without an owner.
        wait_for("a holds every shard", lambda: a.held() == list(range(SHARDS)), 60)
        with elector(kube_api, "b", owners) as b:
            # b, below its limit with nothing free, asks; a hands two shards over.
            wait_for("two shards each", lambda: owners.count() == {"a": 2, "b": 2} and len(b.held()) == 2, 60)
            assert sorted(a.held() + b.held()) == list(range(SHARDS))
            handed = {shard for shard, who in owners.handed if who == "a"}
            assert handed == set(b.held())
        # b stopped (and released its Leases): a, at its limit, takes them back one by one.
        wait_for("a holds every shard again", lambda: a.held() == list(range(SHARDS)), 60)
        assert owners.count() == {"a": SHARDS}
    assert owners.count() == {}  # a released everything on stopping
    assert owners.overlaps == []  # never two owners of one shard at once


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shards", "6", "--leader-elect"], "leave out --leader-elect"),
        (["--shards", "6", "--lease-duration", "10s", "--renew-deadline", "10s"], "--lease-duration >"),
        (["--shards", "6", "--lease-duration", "1500ms"], "whole seconds"),
    ],
)
def test_shard_flags_that_cannot_work_are_refused_before_anything_starts(
    args: list[str], message: str, tmp_path: pathlib.Path
) -> None:
    result = CliRunner().invoke(
        cli_main,
        ["controller", "--kubeconfig", str(tmp_path / "none"), "--metrics-addr", "127.0.0.1:0", *args],
    )
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_each_process_takes_its_share_rounded_up() -> None:
    assert [ControllerSettings(shards=k, replicas=3).shard_limit for k in (1, 3, 4, 6, 7)] == [1, 1, 2, 2, 3]
    assert ControllerSettings(shards=6).shard_lease(5) == "mesh-canary-controller-shard-5"
