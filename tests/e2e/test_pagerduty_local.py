"""On-call, end to end with real processes: `mesh-canary run` on the embedded local mesh (real
model servers behind a real Envoy, real time) as a pipeline would run it, paging a real local
HTTP server that stands in for PagerDuty and Teams. A degraded candidate rolls back (exit 3)
and pages with a payload valid under PagerDuty's documented schema; the next rollout of the
same model is promoted (exit 0) and resolves that page (same dedup key, a new process and a new
state file); Teams gets a valid Adaptive Card for each. The routing key shows in no output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.http_receiver import Receiver, serve
from tests.test_notify_oncall import ADAPTIVE_CARD, PAGERDUTY, ROUTING_KEY, TEAMS_MESSAGE, problems

pytestmark = pytest.mark.e2e

MESH_CANARY = str(Path(sys.executable).parent / "mesh-canary")
POLICY = Path(__file__).parents[2] / "policies" / "local-demo.yaml"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


def run(policy: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PD_ROUTING_KEY": ROUTING_KEY}
    command = [MESH_CANARY, "run", "-f", str(policy), "--backend", "local", "--state", str(state), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_a_rollback_pages_and_the_next_promotion_resolves(receiver: Receiver, tmp_path: Path) -> None:
    receiver.set_mode("accepted")
    doc = yaml.safe_load(POLICY.read_text())
    doc["spec"]["notifications"] = [
        {"pagerduty": {"routingKeyFrom": {"env": "PD_ROUTING_KEY"}, "url": f"{receiver.url}/v2/enqueue"}},
        {"teams": {"url": f"{receiver.url}/teams"}, "events": ["RolledBack", "Promoted"]},
    ]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))

    degraded = run(policy, tmp_path / "first.json", "--candidate", "degraded")
    assert degraded.returncode == 3, degraded.stderr[-2000:]
    healthy = run(policy, tmp_path / "second.json")
    assert healthy.returncode == 0, healthy.stderr[-2000:]

    pages = [p.body for p in receiver.posts if p.path == "/v2/enqueue"]
    cards = [p.body for p in receiver.posts if p.path == "/teams"]
    assert [p["event_action"] for p in pages] == ["trigger", "resolve"]
    for page in pages:
        assert problems(PAGERDUTY, page) == []
        assert page["dedup_key"] == "mesh-canary/default/local-demo"
    assert pages[0]["payload"]["class"] == "RolledBack"
    assert "rolled back to 100% stable" in pages[0]["payload"]["summary"]
    assert [c["attachments"][0]["content"]["body"][0]["text"] for c in cards] == [
        "local-demo: RolledBack",
        "local-demo: Promoted",
    ]
    for card in cards:
        assert (
            problems(TEAMS_MESSAGE, card) == []
            and problems(ADAPTIVE_CARD, card["attachments"][0]["content"]) == []
        )
    for done in (degraded, healthy):
        assert ROUTING_KEY not in done.stdout + done.stderr
    for state in ("first.json", "second.json"):
        assert ROUTING_KEY not in (tmp_path / state).read_text()
