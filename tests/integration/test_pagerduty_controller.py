"""PagerDuty through the controller, end to end on the API stand-in: the routing key in a
Secret, a rollback that pages a real local HTTP server with a payload valid under PagerDuty's
documented schema, `mesh-canary rollout ack` resolving the page, and a later rollout of the
same model that resolves it on promotion. The key appears in no status, log or other payload.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes.client
import pytest
from click.testing import CliRunner

from mesh_canary.cli import main
from tests.conftest import NS, model_rollout
from tests.http_receiver import Receiver, serve
from tests.integration.test_controller import Cluster, Metrics, phase_is, running
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.output_schema import check_output
from tests.test_notify_oncall import PAGERDUTY, ROUTING_KEY, problems
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEDUP_KEY = f"mesh-canary/{NS}/fraud-scorer"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve()


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    c = Cluster(kube_api)
    c.add_vs()
    key = base64.b64encode(ROUTING_KEY.encode()).decode()
    secret = kubernetes.client.V1Secret(metadata={"name": "pagerduty"}, data={"routing-key": key})
    c.core.create_namespaced_secret(NS, secret)
    return c


def paged_rollout(receiver: Receiver, candidate: str) -> dict[str, Any]:
    target = {
        "pagerduty": {
            "routingKeyFrom": {"secretKeyRef": {"name": "pagerduty", "key": "routing-key"}},
            "url": f"{receiver.url}/v2/enqueue",
        }
    }
    return model_rollout(candidate=candidate, notifications=[target])


def actions(receiver: Receiver) -> list[str]:
    return [p.body["event_action"] for p in receiver.posts]


def test_a_rollback_pages_ack_resolves_and_a_later_promotion_resolves_again(
    cluster: Cluster, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.set_mode("accepted")
    cluster.metrics["2.0"] = Metrics()
    cluster.metrics["2.0"].error_rate = 0.3
    cluster.add_rollout(paged_rollout(receiver, "2.0"))
    with caplog.at_level(logging.DEBUG), running(cluster.controller(metrics_addr="127.0.0.1:0")) as ctl:
        wait_for("the rollback", phase_is(cluster, "RolledBack"))
        (trigger,) = receiver.wait_for(1)
        assert problems(PAGERDUTY, trigger.body) == []
        assert trigger.body["event_action"] == "trigger" and trigger.body["dedup_key"] == DEDUP_KEY
        assert trigger.body["routing_key"] == ROUTING_KEY
        assert "rolled back to 100% stable" in trigger.body["payload"]["summary"]

        # A person acknowledges: the CLI reads the resource and the Secret, and resolves the page.
        ack = CliRunner().invoke(
            main,
            [
                *("rollout", "ack", "fraud-scorer", "-n", NS, "--message", "looking into it", "-o", "json"),
                *("--kubeconfig", str(cluster.kube.kubeconfig_path)),
            ],
            catch_exceptions=False,
        )
        assert ack.exit_code == 0, ack.output
        report = json.loads(ack.output)
        assert report["receivers"] == {"pagerduty http://127.0.0.1/...": "sent"}
        check_output(report, "acknowledgement")
        resolve = receiver.wait_for(2)[1]
        assert problems(PAGERDUTY, resolve.body) == []
        assert resolve.body == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": DEDUP_KEY}

        # The next rollout of the model (a new candidate) is promoted: that resolves it too.
        cluster.patch_spec({"candidate": {"version": "3.0"}})
        wait_for("promotion of 3.0", phase_is(cluster, "Succeeded"))
        receiver.wait_for(3)
        metrics = wait_for(
            "the sent notifications counted",
            lambda: (
                text
                if 'mesh_canary_notifications_total{outcome="sent",receiver="pagerduty"} 2.0'
                in (text := httpx.get(f"http://127.0.0.1:{ctl.metrics_port}/metrics").text)
                else None
            ),
        )
    assert actions(receiver) == ["trigger", "resolve", "resolve"]
    assert receiver.posts[2].body["dedup_key"] == DEDUP_KEY
    assert 'mesh_canary_notifications_total{outcome="failed",receiver="pagerduty"}' not in metrics
    # The key went to PagerDuty only.
    assert ROUTING_KEY not in json.dumps(cluster.rollout())
    assert ROUTING_KEY not in caplog.text
    assert all(ROUTING_KEY not in e[2] for e in cluster.events())


def test_ack_without_a_target_that_takes_it_is_bad_input_and_sends_nothing(
    cluster: Cluster, receiver: Receiver
) -> None:
    doc = model_rollout(notifications=[{"webhook": {"url": f"{receiver.url}/x"}, "events": ["RolledBack"]}])
    cluster.add_rollout(doc)
    result = CliRunner().invoke(
        main,
        ["rollout", "ack", "fraud-scorer", "-n", NS, "--kubeconfig", str(cluster.kube.kubeconfig_path)],
    )
    assert result.exit_code == 2, result.output
    assert "no notification target of fraud-scorer takes Acknowledged" in result.output
    assert receiver.posts == []
