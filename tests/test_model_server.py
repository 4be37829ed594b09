"""The demo model server: its model, its degradations, and its HTTP face."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh_canary.localmesh.dataset import CLASSES, FEATURES, sample
from mesh_canary.localmesh.model_server import (
    DRIFT_CLASS,
    VERSION_HEADER,
    Degradation,
    ModelService,
    SoftmaxModel,
)

HELD_OUT = sample(np.random.default_rng(12345), 5000)


def test_model_accuracy_is_in_the_intended_range_for_several_seeds() -> None:
    for seed in (1, 2, 3):
        accuracy = SoftmaxModel.train(seed).accuracy(*HELD_OUT)
        assert 0.85 <= accuracy <= 0.92, f"seed {seed}: {accuracy}"


def test_training_is_deterministic_given_the_seed() -> None:
    a, b, c = SoftmaxModel.train(1), SoftmaxModel.train(1), SoftmaxModel.train(2)
    assert np.array_equal(a.weights, b.weights) and np.array_equal(a.bias, b.bias)
    assert not np.allclose(a.weights, c.weights)


def run(service: ModelService, n: int, seed: int = 99) -> tuple[Counter[int], Counter[str], float]:
    """(codes, predicted classes, accuracy of the 200s) for ``n`` labelled requests."""
    x, y = sample(np.random.default_rng(seed), n)
    codes: Counter[int] = Counter()
    classes: Counter[str] = Counter()
    correct = answered = 0
    for i, (row, label) in enumerate(zip(x, y, strict=True)):
        code, body = service.predict(f"r{i}", row.tolist())
        codes[code] += 1
        if code == 200:
            answered += 1
            classes[body["class"]] += 1
            correct += body["class"] == CLASSES[label]
    return codes, classes, correct / max(answered, 1)


def test_a_healthy_service_answers_everything_as_accurately_as_its_model() -> None:
    codes, classes, accuracy = run(ModelService("v1", 1, latency_ms=0.0), 1000)
    assert codes == {200: 1000}
    assert 0.84 <= accuracy <= 0.93
    assert classes[DRIFT_CLASS] / 1000 < 0.25


def test_error_rate_answers_that_share_with_500() -> None:
    codes, _, accuracy = run(ModelService("v2", 1, Degradation(error_rate=0.3), latency_ms=0.0), 1000)
    # Binomial(1000, 0.3): sd 14.5; +-5 sd.
    assert 228 <= codes[500] <= 372
    assert codes[500] + codes[200] == 1000
    assert accuracy >= 0.84  # the answers given are still good


def test_accuracy_drop_replaces_that_share_with_wrong_classes() -> None:
    _, _, accuracy = run(ModelService("v2", 1, Degradation(accuracy_drop=0.5), latency_ms=0.0), 1000)
    # ~0.88 * 0.5: replaced predictions are always wrong.
    assert 0.36 <= accuracy <= 0.52


def test_drift_pushes_predictions_towards_one_class() -> None:
    _, healthy, _ = run(ModelService("v1", 1, latency_ms=0.0), 1000)
    _, drifted, _ = run(ModelService("v2", 1, Degradation(drift=0.4), latency_ms=0.0), 1000)
    assert drifted[DRIFT_CLASS] - healthy[DRIFT_CLASS] >= 300  # ~0.4 * (1 - 0.15) * 1000 = 340
    assert sum(drifted.values()) == 1000


def test_extra_latency_adds_to_the_service_time() -> None:
    healthy = ModelService("v1", 1, latency_ms=2.0)
    slow = ModelService("v2", 1, Degradation(extra_latency_ms=40.0), latency_ms=2.0)
    assert healthy.delay_s(0.0, 0.0) == pytest.approx(0.002)
    assert slow.delay_s(0.0, 0.0) == pytest.approx(0.042)  # medians add up
    started = time.perf_counter()
    for i in range(5):
        slow.predict(f"r{i}", [0.0, 0.0, 0.0, 0.0])
    assert time.perf_counter() - started >= 5 * 0.015  # lognormal around 42 ms: far above 15 ms


def test_feedback_counts_only_ids_this_server_predicted_and_each_once() -> None:
    service = ModelService("v1", 1, latency_ms=0.0)
    _, body = service.predict("known", [1.5, -1.0, 1.2, 0.0])
    assert service.feedback([("known", "fraud"), ("unknown", "legit"), ("known", "fraud")]) == {
        "matched": 1,
        "unknown": 2,
    }
    text = service.metrics_text().decode()
    cells = {
        (s.labels["predicted"], s.labels["actual"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "model_feedback_total"
    }
    assert cells[(body["class"], "fraud")] == 1
    assert sum(cells.values()) == 1


def test_remembered_predictions_are_bounded() -> None:
    service = ModelService("v1", 1, latency_ms=0.0, remember=3)
    for i in range(5):
        service.predict(f"r{i}", [0.0] * 4)
    assert service.feedback([(f"r{i}", "legit") for i in range(5)]) == {"matched": 3, "unknown": 2}


def test_the_module_serves_http_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mesh_canary.localmesh.model_server", "--version", "v3", "--port", "0",
             "--error-rate", "0"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = ""
        deadline = time.monotonic() + 15
        while not url and time.monotonic() < deadline and process.poll() is None:
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("listening on ")]
            url = lines[0].removeprefix("listening on ") if lines else ""
            time.sleep(0.02)
        assert url, f"the server did not start: {log.read_text()}"
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get("/healthz").json() == {"status": "ok", "version": "v3"}
            answer = client.post("/predict", json={"id": "a", "features": [1.2, -0.9, 1.0, -0.2]})
            assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == "v3"
            body = answer.json()
            assert body["id"] == "a" and body["version"] == "v3" and body["class"] in CLASSES
            assert 1 / len(CLASSES) < body["score"] <= 1
            bad = client.post("/predict", json={"id": "b", "features": [1.0]})
            assert bad.status_code == 400 and str(len(FEATURES)) in bad.json()["error"]
            assert client.post("/feedback", json={"id": "a", "actual": "fraud"}).json() == {
                "matched": 1,
                "unknown": 0,
            }
            assert client.post("/feedback", json={"id": "a", "actual": "nonsense"}).status_code == 400
            metrics = client.get("/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
        }
        assert samples[("model_http_requests_total", (("code", "200"), ("version", "v3")))] == 1
        assert samples[("model_http_requests_total", (("code", "400"), ("version", "v3")))] == 1
        assert samples[("model_predictions_total", (("class", body["class"]), ("version", "v3")))] == 1
        assert (
            samples[
                (
                    "model_feedback_total",
                    (("actual", "fraud"), ("predicted", body["class"]), ("version", "v3")),
                )
            ]
            == 1
        )
        assert not any(name.endswith("_created") for name, _ in samples)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_degradations_outside_their_range_are_refused() -> None:
    with pytest.raises(ValueError, match="error_rate must be between 0 and 1"):
        Degradation(error_rate=1.5)
    with pytest.raises(ValueError, match="extra_latency_ms must not be negative"):
        Degradation(extra_latency_ms=-1)
