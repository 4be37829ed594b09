"""The prediction-label collector: parsing, the store's join and its outcomes, the HTTP
server's limits, and the CLI, against real HTTP on 127.0.0.1 and real subprocesses."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from prometheus_client.parser import text_string_to_metric_families

from mesh_canary.collector.events import (
    REQUEST_TYPE,
    RESPONSE_TYPE,
    Label,
    Malformed,
    Prediction,
    parse_cloudevents,
    parse_labels,
    parse_plain,
)
from mesh_canary.collector.export import render
from mesh_canary.collector.server import Collector, Settings
from mesh_canary.collector.store import Limits, Refused, Store
from mesh_canary.localmesh.mesh import CollectorProcess
from mesh_canary.localmesh.payload_logger import PayloadLogger
from tests.output_schema import check_output

NOW = 1_800_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def event(body: object, event_type: str = RESPONSE_TYPE, id_: str = "r1", **extra: str) -> CloudEvent:
    return CloudEvent(
        attributes={
            "id": id_,
            "type": event_type,
            "source": "http://fraud-predictor-00002-deployment-7d9c/",
            "datacontenttype": "application/json",
            "inferenceservicename": "fraud",
            "component": "predictor",
            "endpoint": "default",
            **extra,
        },
        data=json.dumps(body).encode(),
    )


def samples(text: str | bytes, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = text.decode() if isinstance(text, bytes) else text
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


# --- parsing ---------------------------------------------------------------------------


def test_binary_and_structured_payload_logger_events_give_the_same_prediction() -> None:
    body = {"predictions": [{"class": "fraud", "score": 0.9}]}
    for message in (to_binary_event(event(body)), to_structured_event(event(body))):
        parsed = parse_cloudevents(message.headers, message.body, NOW)
        (p,) = parsed.predictions
        assert (p.id, p.version, p.predicted, p.score) == ("r1", "fraud-predictor-00002", "fraud", 0.9)


def test_request_events_are_acknowledged_and_not_kept() -> None:
    message = to_binary_event(event({"instances": [[1, 2]]}, REQUEST_TYPE))
    parsed = parse_cloudevents(message.headers, message.body, NOW)
    assert parsed.predictions == [] and parsed.requests == 1


def test_version_comes_from_the_response_then_the_revision_then_the_endpoint() -> None:
    with_version = to_binary_event(event({"class": "a", "model_version": "7"}))
    assert parse_cloudevents(with_version.headers, with_version.body, NOW).predictions[0].version == "7"
    no_revision = to_binary_event(event({"class": "a"}, source="http://pod/", endpoint="canary"))
    assert parse_cloudevents(no_revision.headers, no_revision.body, NOW).predictions[0].version == "canary"


def test_a_batch_of_v1_predictions_and_oip_outputs_get_one_id_each() -> None:
    v1 = to_binary_event(event({"predictions": [1, 0, 1]}))
    assert [p.id for p in parse_cloudevents(v1.headers, v1.body, NOW).predictions] == ["r1/0", "r1/1", "r1/2"]
    oip = to_binary_event(
        event(
            {
                "model_version": "v3",
                "outputs": [{"name": "label", "data": ["a", "b"]}, {"name": "score", "data": [0.6, 0.8]}],
            }
        )
    )
    parsed = parse_cloudevents(oip.headers, oip.body, NOW).predictions
    assert [(p.predicted, p.score, p.version) for p in parsed] == [("a", 0.6, "v3"), ("b", 0.8, "v3")]


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({"ce-id": "1", "ce-specversion": "1.0"}, b"{}", "not a CloudEvent"),
        (
            {"ce-id": "1", "ce-specversion": "1.0", "ce-source": "s", "ce-type": "com.example.other"},
            b"{}",
            "ce-type must be",
        ),
        (
            {
                "ce-id": "1",
                "ce-specversion": "1.0",
                "ce-source": "s",
                "ce-type": RESPONSE_TYPE,
                "content-type": "application/json",
            },
            b'{"predictions": []}',
            "predictions must be a non-empty list",
        ),
        (
            {
                "ce-id": "1",
                "ce-specversion": "1.0",
                "ce-source": "s",
                "ce-type": RESPONSE_TYPE,
                "content-type": "application/json",
            },
            b'{"class": "a", "score": 7}',
            "score must be a number between 0 and 1",
        ),
        (
            {
                "ce-id": "1",
                "ce-specversion": "1.0",
                "ce-source": "http://pod/",
                "ce-type": RESPONSE_TYPE,
                "content-type": "application/json",
            },
            b'{"class": "a"}',
            "names no version",
        ),
    ],
)
def test_malformed_events_say_what_is_wrong(headers: dict[str, str], body: bytes, reason: str) -> None:
    with pytest.raises(Malformed, match=reason):
        parse_cloudevents(headers, body, NOW)


def test_plain_predictions_and_labels_one_or_many() -> None:
    assert parse_plain({"id": "a", "version": "v1", "prediction": "x"}, NOW).predictions[0].score is None
    assert (
        len(parse_plain([{"id": "a", "version": "v1", "prediction": "x", "score": 0.5}] * 2, NOW).predictions)
        == 2
    )
    assert parse_labels({"id": "a", "label": "x"}, NOW) == [Label("a", "x", NOW)]
    assert len(parse_labels({"items": [{"id": "a", "label": "x"}, {"id": "b", "label": "y"}]}, NOW)) == 2
    with pytest.raises(Malformed, match="item 1: id must be"):
        parse_labels([{"id": "a", "label": "x"}, {"label": "y"}], NOW)


# --- the store -----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "c.sqlite", retention_s=3600.0)
    yield s
    s.close()


def p(
    id_: str, version: str = "v1", predicted: str = "a", score: float | None = 0.75, at: float = NOW
) -> Prediction:
    return Prediction(id_, version, predicted, score, at)


def feedback(store: Store) -> dict[tuple[tuple[str, str], ...], float]:
    return samples(render(store), "model_feedback_total")


def test_a_label_that_arrives_twice_counts_once(store: Store) -> None:
    store.add_predictions([p("1")])
    assert store.add_labels([Label("1", "a", NOW + 5)]).counts == {"joined": 1}
    assert store.add_labels([Label("1", "a", NOW + 9)]).counts == {"duplicate": 1}
    assert store.add_labels([Label("1", "b", NOW + 9)]).counts == {"conflict": 1}  # the first label stays
    assert feedback(store) == {(("actual", "a"), ("predicted", "a"), ("version", "v1")): 1.0}
    delay = samples(render(store), "model_label_delay_seconds_sum")
    assert delay == {(("version", "v1"),): 5.0}


def test_a_prediction_sent_twice_counts_once(store: Store) -> None:
    assert store.add_predictions([p("1"), p("1")]).counts == {"stored": 1, "duplicate": 1}
    assert samples(render(store), "model_predictions_total") == {(("class", "a"), ("version", "v1")): 1.0}


def test_a_label_for_an_unknown_id_waits_for_its_prediction(store: Store) -> None:
    assert store.add_labels([Label("early", "b", NOW)]).counts == {"unmatched": 1}
    assert samples(render(store), "collector_unmatched_labels") == {(): 1.0}
    assert store.add_predictions([p("early", at=NOW + 2)]).counts == {"stored": 1, "joined": 1}
    assert feedback(store) == {(("actual", "b"), ("predicted", "a"), ("version", "v1")): 1.0}
    assert samples(render(store), "collector_unmatched_labels") == {(): 0.0}
    assert store.report()["unmatchedLabels"] == 0


def test_a_mirrored_copy_is_its_own_prediction_joined_by_the_same_label(store: Store) -> None:
    store.add_predictions([p("1", "v1"), p("1", "v2", predicted="b")])
    assert store.add_labels([Label("1", "a", NOW)]).counts == {"joined": 1}
    assert sum(feedback(store).values()) == 2


def test_a_restart_keeps_every_counter_and_joined_label(tmp_path: Path) -> None:
    first = Store(tmp_path / "c.sqlite", retention_s=3600.0)
    first.add_predictions([p("1"), p("2", predicted="b"), p("3")])
    first.add_labels([Label("1", "a", NOW + 1), Label("x", "a", NOW)])
    before = render(first)
    first.close()  # (the e2e test kills the process instead)
    again = Store(tmp_path / "c.sqlite", retention_s=3600.0)
    assert render(again) == before
    assert again.add_labels([Label("1", "a", NOW + 2)]).counts == {"duplicate": 1}
    assert again.add_labels([Label("2", "a", NOW + 2)]).counts == {"joined": 1}
    assert again.report()["unlabelledPredictions"] == {"v1": 1}
    again.close()


def test_retention_deletes_old_rows_without_lowering_a_counter(store: Store) -> None:
    store.add_predictions([p("old", at=NOW - 7200), p("old-labelled", at=NOW - 7200), p("new")])
    store.add_labels([Label("old-labelled", "a", NOW - 7000), Label("orphan", "a", NOW - 7200)])
    predictions_before = samples(render(store), "model_predictions_total")
    feedback_before = feedback(store)
    assert store.expire(NOW) == 3
    text = render(store)
    assert samples(text, "model_predictions_total") == predictions_before
    assert feedback(store) == feedback_before
    assert samples(text, "collector_expired_unlabelled_total") == {(("version", "v1"),): 1.0}
    assert samples(text, "collector_expired_labels_total") == {(): 1.0}
    assert samples(text, "collector_unlabelled_predictions") == {(("version", "v1"),): 1.0}  # "new"


def test_versions_and_classes_are_capped(tmp_path: Path) -> None:
    s = Store(tmp_path / "c.sqlite", 3600.0, Limits(max_versions=2, max_classes=2))
    s.add_predictions([p("1", "v1"), p("2", "v2")])
    with pytest.raises(Refused, match="version 'v3' refused"):
        s.add_predictions([p("3", "v3")])
    s.add_predictions([p("4", "v1", predicted="b")])
    with pytest.raises(Refused, match="class 'c' refused"):
        s.add_predictions([p("5", "v1", predicted="c")])
    s.add_labels([Label("1", "a", NOW), Label("4", "b", NOW)])
    with pytest.raises(Refused, match="label 'c' refused"):
        s.add_labels([Label("2", "c", NOW)])
    s.close()


def test_metrics_follow_the_convention_with_zero_series_for_known_versions(store: Store) -> None:
    store.add_predictions([p("1", score=0.95), p("2", score=None)])
    text = render(store)
    buckets = samples(text, "model_prediction_score_bucket")
    assert buckets[(("le", "0.9"), ("version", "v1"))] == 0.0
    assert buckets[(("le", "1.0"), ("version", "v1"))] == 1.0  # the prediction without a score is not in it
    assert samples(text, "model_label_delay_seconds_count") == {(("version", "v1"),): 0.0}


# --- the HTTP server ---------------------------------------------------------------------


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    settings = Settings(db_path=str(tmp_path / "c.sqlite"), max_body_bytes=4096, request_timeout_s=1.0)
    with Collector(settings) as c:
        yield c


def test_over_http_events_labels_metrics_and_the_unmatched_report(collector: Collector) -> None:
    url = collector.url
    for e in (event({"instances": [[1.0]]}, REQUEST_TYPE), event({"class": "fraud", "score": 0.9})):
        m = to_binary_event(e)
        assert httpx.post(url, headers=m.headers, content=m.body).status_code == 200
    plain = [
        {"id": "p1", "version": "v1", "prediction": "legit"},
        {"id": "p2", "version": "v1", "prediction": "fraud"},
    ]
    assert httpx.post(f"{url}/predictions", json=plain).json() == {"stored": 2}
    answer = httpx.post(
        f"{url}/labels", json=[{"id": "r1", "label": "fraud"}, {"id": "nope", "label": "legit"}]
    )
    assert answer.json() == {"joined": 1, "unmatched": 1}
    report = httpx.get(f"{url}/unmatched").json()
    assert report["unlabelledPredictions"] == {"v1": 2}
    assert report["oldestUnmatchedLabels"][0]["id"] == "nope"
    text = httpx.get(f"{url}/metrics").text
    assert samples(text, "model_feedback_total") == {
        (("actual", "fraud"), ("predicted", "fraud"), ("version", "fraud-predictor-00002")): 1.0
    }
    assert samples(text, "collector_events_total")[(("kind", "request"), ("outcome", "ignored"))] == 1.0


def test_a_malformed_event_gets_400_with_a_reason_and_nothing_is_kept(collector: Collector) -> None:
    m = to_binary_event(event({"class": "a", "score": 2}))
    answer = httpx.post(collector.url, headers=m.headers, content=m.body)
    assert answer.status_code == 400
    assert "score must be a number between 0 and 1" in answer.json()["error"]
    bad_json = httpx.post(f"{collector.url}/labels", content=b"{not json")
    assert bad_json.status_code == 400 and bad_json.json() == {"error": "the body is not JSON"}
    partly_bad = [{"id": "ok", "version": "v1", "prediction": "a"}, {"id": "bad", "version": "v1"}]
    assert httpx.post(f"{collector.url}/predictions", json=partly_bad).status_code == 400
    text = httpx.get(f"{collector.url}/metrics").text
    assert samples(text, "model_predictions_total") == {}  # not even the good half of a bad batch
    events = samples(text, "collector_events_total")
    assert events[(("kind", "prediction"), ("outcome", "rejected"))] == 2.0


def test_a_body_over_the_limit_is_refused_unread(collector: Collector) -> None:
    answer = httpx.post(f"{collector.url}/labels", content=b"x" * 5000)
    assert answer.status_code == 413 and "limit is 4096" in answer.json()["error"]


def test_a_stalled_client_is_cut_off_at_the_deadline(collector: Collector) -> None:
    host, port = collector.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=60) as conn:
        conn.sendall(b"POST /labels HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # then nothing
        started = time.monotonic()
        assert conn.recv(1024) == b""  # closed by the server (1 s deadline)
        assert time.monotonic() - started < 30  # bounded, not forever
    assert httpx.get(f"{collector.url}/healthz").status_code == 200  # and it still serves


def test_the_local_payload_logger_sends_what_the_collector_joins(collector: Collector) -> None:
    logger = PayloadLogger(collector.url, "local-model", "v1", "http://local-model-v1/")
    logger.log(
        "q1",
        {"id": "q1", "features": [0, 0, 0, 0]},
        {"id": "q1", "class": "legit", "score": 0.8, "version": "v1"},
    )
    logger.close()
    assert logger.sent == 2 and logger.dropped == 0
    assert httpx.post(f"{collector.url}/labels", json={"id": "q1", "label": "legit"}).json() == {"joined": 1}


# --- the CLI, as a real subprocess -----------------------------------------------------


def mesh_canary(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh_canary", *args], capture_output=True, text=True, timeout=timeout
    )


def test_serve_and_import_labels_from_a_warehouse_export(tmp_path: Path) -> None:
    server = CollectorProcess(tmp_path / "c.sqlite", tmp_path)  # `mesh-canary collector serve`
    try:
        server.wait_listening(time.monotonic() + 60)
        url = server.url
        httpx.post(
            f"{url}/predictions", json=[{"id": f"i{n}", "version": "v1", "prediction": "a"} for n in range(3)]
        )
        csv_file = tmp_path / "labels.csv"
        csv_file.write_text(
            "id,label,loaded_at\ni0,a,2026-01-01\ni1,b,2026-01-01\ni9,a,2026-01-01\ni0,a,2026-01-01\n"
        )
        done = mesh_canary("collector", "import-labels", str(csv_file), "--url", url, "-o", "json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report == {"labels": 4, "joined": 2, "unmatched": 1, "duplicate": 1}
        check_output(report, "labelImport")
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"id": "i2", "label": "a"}\n{"id": "i2"}\n')
        refused = mesh_canary("collector", "import-labels", str(bad), "--url", url)
        assert refused.returncode == 2
        assert "bad.jsonl:2: label must be 1 to 253 characters" in refused.stderr
        # Nothing of the bad file was sent: i2 still waits for its label.
        assert httpx.get(f"{url}/unmatched").json()["unlabelledPredictions"] == {"v1": 1}
    finally:
        server.stop(grace_s=30)
    assert server.process.returncode == 0  # SIGTERM: a clean stop


def test_bad_serve_options_exit_2_with_one_sentence() -> None:
    done = mesh_canary("collector", "serve", "--retention", "soon")
    assert done.returncode == 2 and "--retention 'soon' is not a duration" in done.stderr


def test_the_in_cluster_manifest_runs_a_valid_serve_command_with_its_volume() -> None:
    import yaml

    from mesh_canary.cli import collector_serve

    docs = {
        d["kind"]: d
        for d in yaml.safe_load_all((ROOT / "manifests" / "kserve" / "collector.yaml").read_text())
    }
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["collector", "serve"]
    ctx = collector_serve.make_context("serve", args[2:])  # every option is one `serve` accepts
    db_dir = str(Path(ctx.params["db_path"]).parent)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert (
        volumes[mounts[db_dir]]["persistentVolumeClaim"]["claimName"]
        == docs["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert (
        docs["Deployment"]["spec"]["replicas"] == 1
        and docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
    )
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert ctx.params["address"].startswith("0.0.0.0:")


def test_a_failing_store_answers_503_and_fails_the_health_check(collector: Collector) -> None:
    collector.store.close()  # as at shutdown, or a disk gone bad
    answer = httpx.post(f"{collector.url}/predictions", json={"id": "a", "version": "v1", "prediction": "x"})
    assert answer.status_code == 503 and answer.json() == {"error": "the store failed; retry later"}
    bad = httpx.post(f"{collector.url}/predictions", json={"id": "a"})
    assert bad.status_code == 503  # even counting a rejection needs the store
    assert httpx.get(f"{collector.url}/healthz").status_code == 503  # the liveness probe restarts it


def test_import_labels_gives_up_on_a_collector_that_never_answers() -> None:
    """A real listener on 127.0.0.1 that reads the request and never answers: the import ends
    by its deadline with one sentence (exit 1), instead of waiting forever."""
    import threading

    from mesh_canary.collector.importer import post_labels
    from mesh_canary.errors import CouldNotWork

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    started = time.monotonic()
    try:
        with pytest.raises(CouldNotWork, match="after 0 of 1 labels: no answer within 1s"):
            post_labels(url, [{"id": "a", "label": "x"}], total=1, timeout_s=1.0)
        assert time.monotonic() - started < 30  # bounded, not forever
    finally:
        listener.close()
        for conn in held:
            conn.close()


# --- the event-loop server: keep-alive, pipelining, group commit, kill -9 ------------------


def binary_request(id_: str, path: str = "/") -> bytes:
    """One binary-mode response event as the raw bytes of an HTTP/1.1 request."""
    m = to_binary_event(event({"class": "fraud", "score": 0.9}, id_=id_))
    head = "".join(f"{k}: {v}\r\n" for k, v in m.headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}Content-Length: {len(m.body)}\r\n\r\n".encode() + m.body


def read_answer(stream: Any) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of the next answer on a buffered socket file."""
    status = int(stream.readline().split()[1])
    length = 0
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, json.loads(stream.read(length))


def test_many_events_on_one_kept_alive_connection(collector: Collector) -> None:
    import http.client

    host, port = collector.server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
    answers = []
    first_socket = None
    for i in range(300):
        m = to_binary_event(event({"class": "fraud", "score": 0.9}, id_=f"k{i}"))
        conn.request("POST", "/", body=m.body, headers=m.headers)
        response = conn.getresponse()
        answers.append((response.status, json.loads(response.read())))
        first_socket = first_socket or conn.sock
        assert conn.sock is first_socket  # the same connection, never reopened
    conn.close()
    assert answers == [(200, {"stored": 1})] * 300
    text = httpx.get(f"{collector.url}/metrics").text
    assert samples(text, "model_predictions_total") == {
        (("class", "fraud"), ("version", "fraud-predictor-00002")): 300.0
    }


@pytest.fixture(params=["uvloop", "asyncio"])
def either_loop_collector(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Collector]:
    """The collector on uvloop (a dependency), and on plain asyncio as where uvloop cannot
    import (the fallback: ``import uvloop`` raises ImportError)."""
    if request.param == "asyncio":
        monkeypatch.setitem(sys.modules, "uvloop", None)
    settings = Settings(db_path=str(tmp_path / "c.sqlite"), max_body_bytes=4096, request_timeout_s=1.0)
    with Collector(settings) as c:
        assert c.server.loop_kind == request.param
        yield c


def test_pipelined_requests_are_answered_in_order_and_committed_in_groups(
    either_loop_collector: Collector,
) -> None:
    """50 requests sent at once on one connection: answers come in request order (each id
    twice: stored, then duplicate; one malformed in the middle gets its 400 in its place),
    fewer transactions than requests were committed, and a group's answers went out in one
    write each (fewer writes than answers). On either event loop."""
    collector = either_loop_collector
    writer = collector.server.writer
    groups_before, writes_before = writer.groups, writer.writes
    sends_before = collector.server.writes
    requests = [binary_request(f"p{i // 2}") for i in range(50)]
    requests[25] = b"POST /labels HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{bad}"
    host, port = collector.server.server_address[:2]
    with socket.create_connection((str(host), int(port)), timeout=30) as conn:
        conn.sendall(b"".join(requests))
        stream = conn.makefile("rb")
        answers = [read_answer(stream) for _ in requests]
    expected: list[tuple[int, dict[str, Any]]] = [
        (200, {"stored": 1}) if i % 2 == 0 else (200, {"duplicate": 1}) for i in range(50)
    ]
    expected[25] = (400, {"error": "the body is not JSON"})
    expected[24] = (200, {"stored": 1})  # p12's first copy (25 was its second)
    assert answers[:25] == expected[:25] and answers[25] == expected[25]
    assert answers[26:] == expected[26:]
    assert writer.writes - writes_before == 50
    assert writer.groups - groups_before < 50  # group commit: several requests per transaction
    assert collector.server.writes - sends_before < 50  # a group's answers: one write
    # and the server goes on answering on the same loop (a new connection, one event)
    m = to_binary_event(event({"class": "fraud", "score": 0.9}, id_="after"))
    assert httpx.post(collector.url, headers=m.headers, content=m.body).json() == {"stored": 1}


def test_concurrent_connections_all_get_their_answers(collector: Collector) -> None:
    import threading

    failures: list[str] = []

    def send(worker: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(40):
                m = to_binary_event(event({"class": "legit", "score": 0.6}, id_=f"c{worker}-{i}"))
                answer = client.post(collector.url, headers=m.headers, content=m.body)
                if answer.status_code != 200 or answer.json() != {"stored": 1}:
                    failures.append(f"{worker}/{i}: {answer.status_code} {answer.text}")

    threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    text = httpx.get(f"{collector.url}/metrics").text
    assert samples(text, "model_predictions_total") == {
        (("class", "legit"), ("version", "fraud-predictor-00002")): 320.0
    }


def test_an_answered_event_survives_kill_9_of_the_collector(tmp_path: Path) -> None:
    """Every event that got its 200 was committed: after SIGKILL and a restart on the same
    store, each is counted and a resend is a duplicate."""
    server = CollectorProcess(tmp_path / "c.sqlite", tmp_path)
    try:
        server.wait_listening(time.monotonic() + 60)
        with httpx.Client(timeout=30) as client:
            for i in range(100):
                m = to_binary_event(event({"class": "fraud", "score": 0.9}, id_=f"d{i}"))
                assert client.post(server.url, headers=m.headers, content=m.body).json() == {"stored": 1}
        server.process.kill()  # SIGKILL: no clean shutdown, no WAL checkpoint
        server.process.wait(timeout=30)
    finally:
        server.stop(grace_s=5)
    again = CollectorProcess(tmp_path / "c.sqlite", tmp_path)
    try:
        again.wait_listening(time.monotonic() + 60)
        text = httpx.get(f"{again.url}/metrics", timeout=30).text
        assert samples(text, "model_predictions_total") == {
            (("class", "fraud"), ("version", "fraud-predictor-00002")): 100.0
        }
        m = to_binary_event(event({"class": "fraud", "score": 0.9}, id_="d99"))
        assert httpx.post(again.url, headers=m.headers, content=m.body, timeout=30).json() == {"duplicate": 1}
    finally:
        again.stop(grace_s=30)


def test_http_limits_answer_and_close(collector: Collector) -> None:
    """A chunked body (no Content-Length) gets 411, an oversized head 431; both close."""
    host, port = collector.server.server_address[:2]
    for raw, status in (
        (
            b"POST /labels HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{bad}\r\n0\r\n\r\n",
            411,
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    ):
        with socket.create_connection((str(host), int(port)), timeout=30) as conn:
            conn.sendall(raw)
            stream = conn.makefile("rb")
            assert read_answer(stream)[0] == status
            assert stream.read() == b""  # closed after the answer
