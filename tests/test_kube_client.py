"""The ApiClient mesh-canary's commands and controller make: plain JSON bodies go out as they
are (no walk in Python), anything else as the official client sends it."""

from __future__ import annotations

import datetime
import json

import kubernetes.client

from mesh_canary.kube.rollouts import json_api_client


def test_a_plain_json_body_is_sent_as_it_is_and_encodes_as_the_official_clients() -> None:
    ours, theirs = json_api_client(), kubernetes.client.ApiClient()
    body = {
        "status": {"phase": "Progressing", "weights": [90, 10], "ratio": 1.25, "ok": True, "none": None},
        "list": [{"a": (1, 2)}, "x"],
    }
    sent = ours.sanitize_for_serialization(body)
    assert sent is body  # no copy, no walk
    assert json.dumps(sent) == json.dumps(theirs.sanitize_for_serialization(body))


def test_models_and_dates_take_the_official_clients_way() -> None:
    ours, theirs = json_api_client(), kubernetes.client.ApiClient()
    when = datetime.datetime(2026, 12, 2, 18, 0, tzinfo=datetime.UTC)
    body = {"metadata": {"creationTimestamp": when}, "items": [kubernetes.client.V1ObjectMeta(name="a")]}
    sent = ours.sanitize_for_serialization(body)
    assert sent == theirs.sanitize_for_serialization(body)
    assert sent["metadata"]["creationTimestamp"] == "2026-12-02T18:00:00+00:00"
    assert sent["items"] == [{"name": "a"}]
    event = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(name="e"),
        involved_object=kubernetes.client.V1ObjectReference(name="r"),
    )
    assert ours.sanitize_for_serialization(event) == theirs.sanitize_for_serialization(event)
