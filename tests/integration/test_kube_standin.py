"""The API stand-in behaves like a Kubernetes API server where the controller relies on it.

Through the official client (and raw HTTP where the client cannot say it), over real HTTP.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import httpx
import kubernetes.client
import kubernetes.watch
import pytest
from kubernetes.client.exceptions import ApiException
from kubernetes.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from tests.crd_schema import MODELROLLOUT_CRD, load_yaml
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn

pytestmark = pytest.mark.integration

G, V, P, NS = "mesh-canary.io", "v1alpha1", "modelrollouts", "models"
MR_PATH = f"{G}/{V}/{P}"


def rollout(name: str = "fraud-scorer", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {
            "virtualService": {"name": "fraud-scorer"},
            "stable": {"destination": {"host": "fraud-scorer", "subset": "v1"}},
            "candidate": {"destination": {"host": "fraud-scorer", "subset": "v2"}},
        },
    }


def api(kube: KubeStandIn) -> Any:
    return kubernetes.client.CustomObjectsApi(kube.api_client())


def status_of(e: pytest.ExceptionInfo[ApiException]) -> tuple[int, str]:
    return e.value.status, json.loads(e.value.body)["reason"]


def test_server_managed_metadata_and_the_status_subresource(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    created = custom.create_namespaced_custom_object(G, V, NS, P, dict(rollout(), status={"phase": "Forged"}))
    meta = created["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert "status" not in created, "a create cannot set the status"

    with_status = custom.patch_namespaced_custom_object_status(
        G, V, NS, P, "fraud-scorer", {"status": {"phase": "Progressing"}}
    )
    assert with_status["status"] == {"phase": "Progressing"}
    assert with_status["metadata"]["generation"] == 1  # status writes do not bump it
    assert int(with_status["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    changed = dict(with_status, status={"phase": "Overwritten"})
    changed["spec"]["candidate"]["version"] = "1.5.1"
    replaced = custom.replace_namespaced_custom_object(G, V, NS, P, "fraud-scorer", changed)
    assert replaced["metadata"]["generation"] == 2  # a spec change does
    assert replaced["status"] == {"phase": "Progressing"}, "the object endpoint keeps the status"

    status_body = dict(replaced, spec={"virtualService": {"name": "ignored"}}, status={"phase": "Succeeded"})
    after = custom.replace_namespaced_custom_object_status(G, V, NS, P, "fraud-scorer", status_body)
    assert after["spec"]["virtualService"]["name"] == "fraud-scorer", "the status endpoint keeps the spec"
    assert after["status"] == {"phase": "Succeeded"} and after["metadata"]["generation"] == 2


def test_conflicts_and_preconditions(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    first = custom.create_namespaced_custom_object(G, V, NS, P, rollout())
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object(G, V, NS, P, rollout())
    assert status_of(e) == (409, "AlreadyExists")
    custom.patch_namespaced_custom_object(G, V, NS, P, "fraud-scorer", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException) as e:  # `first` carries the resourceVersion before the patch
        custom.replace_namespaced_custom_object(G, V, NS, P, "fraud-scorer", first)
    assert status_of(e) == (409, "Conflict")
    with pytest.raises(ApiException) as e:  # a patch carrying a stale resourceVersion is a precondition
        custom.patch_namespaced_custom_object(
            G,
            V,
            NS,
            P,
            "fraud-scorer",
            {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}},
        )
    assert status_of(e) == (409, "Conflict")
    unconditional = dict(first, metadata={"name": "fraud-scorer", "namespace": NS})
    with pytest.raises(ApiException) as e:  # custom resources need the resourceVersion on PUT
        custom.replace_namespaced_custom_object(G, V, NS, P, "fraud-scorer", unconditional)
    assert status_of(e) == (422, "Invalid")
    with pytest.raises(ApiException) as e:
        custom.get_namespaced_custom_object(G, V, NS, P, "nope")
    assert status_of(e) == (404, "NotFound")


def test_patch_media_types(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    custom.create_namespaced_custom_object(G, V, NS, P, rollout())
    with pytest.raises(ApiException) as e:  # the client sends a list as a merge patch
        custom.patch_namespaced_custom_object(
            G, V, NS, P, "fraud-scorer", [{"op": "replace", "path": "/spec/strategy", "value": "canary"}]
        )
    assert status_of(e) == (400, "BadRequest")
    url = f"{kube_api.url}/apis/{G}/{V}/namespaces/{NS}/{P}/fraud-scorer"
    ops = [
        {"op": "test", "path": "/spec/virtualService/name", "value": "fraud-scorer"},
        {"op": "add", "path": "/spec/virtualService/routes", "value": ["primary"]},
    ]
    response = httpx.patch(
        url, content=json.dumps(ops), headers={"Content-Type": "application/json-patch+json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["spec"]["virtualService"]["routes"] == ["primary"]
    failing = [{"op": "test", "path": "/spec/virtualService/name", "value": "other"}]
    response = httpx.patch(
        url, content=json.dumps(failing), headers={"Content-Type": "application/json-patch+json"}
    )
    assert response.status_code == 422
    response = httpx.patch(
        url, content="{}", headers={"Content-Type": "application/strategic-merge-patch+json"}
    )
    assert response.status_code == 415  # as for custom resources on a real server
    invalid = [{"op": "add", "path": "/spec/canary", "value": {"steps": "fast"}}]
    response = httpx.patch(
        url, content=json.dumps(invalid), headers={"Content-Type": "application/json-patch+json"}
    )
    assert (
        response.status_code == 422
        and response.json()["details"]["causes"][0]["field"] == "spec.canary.steps"
    )


def test_lists_carry_kind_and_honour_selectors(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    custom.create_namespaced_custom_object(G, V, NS, P, rollout("a", team="fraud"))
    custom.create_namespaced_custom_object(G, V, NS, P, rollout("b", team="risk"))
    listed = custom.list_namespaced_custom_object(G, V, NS, P)
    assert (listed["kind"], listed["apiVersion"]) == ("ModelRolloutList", f"{G}/{V}")
    assert int(listed["metadata"]["resourceVersion"]) >= 2
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    assert [
        i["metadata"]["name"]
        for i in custom.list_cluster_custom_object(G, V, P, label_selector="team=risk")["items"]
    ] == ["b"]
    assert [
        i["metadata"]["name"]
        for i in custom.list_namespaced_custom_object(G, V, NS, P, field_selector="metadata.name=a")["items"]
    ] == ["a"]
    assert custom.list_namespaced_custom_object(G, V, "elsewhere", P)["items"] == []


def test_watch_resumes_after_a_resource_version_and_ends_after_its_timeout(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    created = custom.create_namespaced_custom_object(G, V, NS, P, rollout())
    since = created["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object_status(
        G, V, NS, P, "fraud-scorer", {"status": {"phase": "Progressing"}}
    )

    def later() -> None:
        time.sleep(0.3)
        custom.patch_namespaced_custom_object_status(
            G, V, NS, P, "fraud-scorer", {"status": {"phase": "Succeeded"}}
        )
        custom.delete_namespaced_custom_object(G, V, NS, P, "fraud-scorer")

    writer = threading.Thread(target=later)
    writer.start()
    started = time.monotonic()
    events = [
        (e["type"], (e["object"].get("status") or {}).get("phase"))
        for e in kubernetes.watch.Watch().stream(
            custom.list_namespaced_custom_object, G, V, NS, P, resource_version=since, timeout_seconds=1
        )
    ]
    took = time.monotonic() - started
    writer.join()
    assert events == [("MODIFIED", "Progressing"), ("MODIFIED", "Succeeded"), ("DELETED", "Succeeded")]
    assert 0.9 < took < 3.0, f"the watch should end after timeoutSeconds=1, took {took:.1f}s"


def test_delete_waits_for_finalizers(kube_api: KubeStandIn) -> None:
    custom = api(kube_api)
    body = rollout()
    body["metadata"]["finalizers"] = ["mesh-canary.io/traffic"]
    custom.create_namespaced_custom_object(G, V, NS, P, body)
    custom.delete_namespaced_custom_object(G, V, NS, P, "fraud-scorer")
    held = custom.get_namespaced_custom_object(G, V, NS, P, "fraud-scorer")
    assert held["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(G, V, NS, P, "fraud-scorer", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        custom.get_namespaced_custom_object(G, V, NS, P, "fraud-scorer")
    assert e.value.status == 404


def test_leases_work_with_the_official_leader_election_lock(kube_api: KubeStandIn) -> None:
    default = kubernetes.client.Configuration.get_default_copy()
    config = kubernetes.client.Configuration()
    config.host = kube_api.url
    kubernetes.client.Configuration.set_default(config)  # LeaseLock uses the default client
    try:
        now = str(datetime.datetime.now())  # the record's time format
        later = str(datetime.datetime.now() + datetime.timedelta(seconds=5))
        record = LeaderElectionRecord("pod-a", "15", now, now)
        lock_a, lock_b = (
            LeaseLock("mesh-canary", "mesh-canary-system", "pod-a"),
            LeaseLock("mesh-canary", "mesh-canary-system", "pod-b"),
        )
        assert lock_a.create("mesh-canary", "mesh-canary-system", record)
        found, seen = lock_b.get("mesh-canary", "mesh-canary-system")
        assert found and seen.holder_identity == "pod-a"
        assert lock_a.get("mesh-canary", "mesh-canary-system")[0]
        assert lock_a.update(
            "mesh-canary", "mesh-canary-system", LeaderElectionRecord("pod-a", "15", now, later)
        )
        # pod-b read before pod-a's renewal: its takeover is refused (409), as on a real server
        assert not lock_b.update(
            "mesh-canary", "mesh-canary-system", LeaderElectionRecord("pod-b", "15", now, now)
        )
        assert lock_b.get("mesh-canary", "mesh-canary-system")[1].holder_identity == "pod-a"
    finally:
        kubernetes.client.Configuration.set_default(default)


def test_events_in_both_apis(kube_api: KubeStandIn) -> None:
    client = kube_api.api_client()
    ref = kubernetes.client.V1ObjectReference(
        api_version=f"{G}/{V}", kind="ModelRollout", name="fraud-scorer", namespace=NS
    )
    core = kubernetes.client.CoreV1Api(client).create_namespaced_event(
        NS,
        kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(generate_name="fraud-scorer."),
            involved_object=ref,
            reason="RolledBack",
            message="errorRate failed",
            type="Warning",
            count=1,
        ),
    )
    assert core.metadata.name.startswith("fraud-scorer.") and core.metadata.resource_version
    kubernetes.client.CoreV1Api(client).patch_namespaced_event(core.metadata.name, NS, {"count": 2})
    events = kubernetes.client.EventsV1Api(client)
    new = events.create_namespaced_event(
        NS,
        kubernetes.client.EventsV1Event(
            metadata=kubernetes.client.V1ObjectMeta(name="fraud-scorer.step"),
            regarding=ref,
            reason="StepAdvanced",
            note="10%",
            type="Normal",
            action="SetWeights",
            event_time=datetime.datetime.now(datetime.UTC),
            reporting_controller="mesh-canary.io/controller",
            reporting_instance="pod-a",
        ),
    )
    assert new.metadata.name == "fraud-scorer.step"
    listed = kubernetes.client.CoreV1Api(client).list_namespaced_event(NS)
    assert [(e.reason, e.count) for e in listed.items] == [("RolledBack", 2)]
    assert [e.reason for e in events.list_namespaced_event(NS).items] == ["StepAdvanced"]


def test_discovery_and_tables(kube_api: KubeStandIn) -> None:
    listing = httpx.get(f"{kube_api.url}/apis/{G}/{V}").json()
    resources = {r["name"]: r for r in listing["resources"]}
    assert resources[P]["kind"] == "ModelRollout" and resources[P]["shortNames"] == ["mro"]
    assert resources[P]["namespaced"] is True
    assert sorted(resources[f"{P}/status"]["verbs"]) == ["get", "patch", "update"]
    groups = {g["name"] for g in httpx.get(f"{kube_api.url}/apis").json()["groups"]}
    assert {G, "networking.istio.io", "coordination.k8s.io", "events.k8s.io"} <= groups
    api(kube_api).create_namespaced_custom_object(G, V, NS, P, rollout())
    table = httpx.get(
        f"{kube_api.url}/apis/{G}/{V}/namespaces/{NS}/{P}",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    ).json()
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Phase",
        "Step",
        "Weight",
        "Candidate",
        "Age",
    ]
    assert table["rows"][0]["cells"][:4] == ["fraud-scorer", None, None, None]


def test_requests_counted_by_verb_and_commit_times_kept_without_kmocks_request_log() -> None:
    """What bench/controller_scale.py reads: requests by verb and resource, each revision's
    commit time; with ``keep_requests=False`` kmock keeps no request (its per-request cost
    would otherwise grow with every request before) and the API still answers."""
    with KubeStandIn([load_yaml(MODELROLLOUT_CRD)], keep_requests=False) as kube:
        custom = api(kube)
        before = time.time()
        created = custom.create_namespaced_custom_object(G, V, NS, P, rollout())
        for phase in ("Progressing", "Succeeded"):
            custom.patch_namespaced_custom_object_status(
                G, V, NS, P, "fraud-scorer", {"status": {"phase": phase}}
            )
        custom.get_namespaced_custom_object(G, V, NS, P, "fraud-scorer")
        custom.list_namespaced_custom_object(G, V, NS, P)
        counts = kube.call(lambda h: dict(h.requests))
        assert counts == {
            ("create", P): 1,
            ("patch", f"{P}/status"): 2,
            ("get", P): 1,
            ("list", P): 1,
        }
        committed = kube.call(lambda h: dict(h.committed_at))
        revision = int(created["metadata"]["resourceVersion"])
        assert before <= committed[revision] <= time.time()
        assert kube.call(lambda h: len(h._requests)) <= 1  # only the request being served is kept
        assert [v["status"]["phase"] for v in kube.stored(MR_PATH, NS, "fraud-scorer")[1:]] == [
            "Progressing",
            "Succeeded",
        ]
