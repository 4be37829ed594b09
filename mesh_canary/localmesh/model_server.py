"""A demo model service: a small numpy softmax classifier behind a real HTTP server.

    python -m mesh_canary.localmesh.model_server --port 0 --version v1 --seed 1 \
        [--error-rate 0.0] [--extra-latency-ms 0] [--accuracy-drop 0.0] [--drift 0.0]

It trains at start-up (well under a second) on a seeded sample of the synthetic data set
(mesh_canary.localmesh.dataset), prints ``listening on http://127.0.0.1:PORT`` on stdout
once it accepts connections, and serves:

- ``POST /predict``  {"id": str, "features": [4 floats]} -> {"id", "class", "score",
  "version"}, with the header ``x-model-version``;
- ``POST /feedback`` {"id", "actual"} or {"items": [{"id", "actual"}, ...]}: ground truth
  for earlier predictions; ids this server never predicted (or forgot: it remembers the
  last ``--remember`` ids) are ignored, so a client may post every label to every server;
- ``GET /metrics``   the model metrics convention plus
  ``model_http_requests_total{version,code}`` (``/predict`` requests answered, by code);
- ``GET /healthz``.

With ``--payload-logger URL`` it behaves like a KServe model behind the logger sidecar:
every prediction's request and response go to URL as payload-logger CloudEvents
(mesh_canary.localmesh.payload_logger), ``/metrics`` has only
``model_http_requests_total`` (the collector at URL exports the convention) and there is
no ``/feedback`` (labels go to the collector).

Degradations make a bad candidate: ``--error-rate`` answers that share with 500,
``--extra-latency-ms`` adds a lognormal delay with that median, ``--accuracy-drop``
replaces that share of predictions with a wrong class, ``--drift`` replaces that share
with the class ``DRIFT_CLASS``. SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)

from mesh_canary.localmesh.dataset import CLASSES, FEATURES, FloatArray, IntArray, sample
from mesh_canary.localmesh.payload_logger import PayloadLogger
from mesh_canary.modelmetrics import ModelMetrics

DRIFT_CLASS = "fraud"
TRAINING_SAMPLES = 4000
VERSION_HEADER = "x-model-version"


@dataclass(frozen=True)
class SoftmaxModel:
    """Multinomial logistic regression: ``softmax(x @ weights + bias)``."""

    weights: FloatArray  # (features, classes)
    bias: FloatArray  # (classes,)

    @classmethod
    def train(
        cls, seed: int, n: int = TRAINING_SAMPLES, iterations: int = 300, rate: float = 0.5
    ) -> SoftmaxModel:
        """Full-batch gradient descent on ``n`` samples drawn with ``seed``: deterministic."""
        x, y = sample(np.random.default_rng(seed), n)
        onehot = np.eye(len(CLASSES))[y]
        weights = np.zeros((x.shape[1], len(CLASSES)))
        bias = np.zeros(len(CLASSES))
        for _ in range(iterations):
            grad = (softmax(x @ weights + bias) - onehot) / n
            weights -= rate * (x.T @ grad)
            bias -= rate * grad.sum(axis=0)
        return cls(weights, bias)

    def predict_proba(self, x: FloatArray) -> FloatArray:
        return softmax(np.atleast_2d(x) @ self.weights + self.bias)

    def accuracy(self, x: FloatArray, y: IntArray) -> float:
        return float((self.predict_proba(x).argmax(axis=1) == y).mean())


def softmax(z: FloatArray) -> FloatArray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class Degradation:
    """How a model server misbehaves (all zero: healthy)."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0
    accuracy_drop: float = 0.0
    drift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("error_rate", "accuracy_drop", "drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {getattr(self, name)}")
        if self.extra_latency_ms < 0:
            raise ValueError(f"extra_latency_ms must not be negative, not {self.extra_latency_ms}")

    def args(self) -> list[str]:
        """Command-line flags of this module that reproduce it."""
        return [
            f"--error-rate={self.error_rate}",
            f"--extra-latency-ms={self.extra_latency_ms}",
            f"--accuracy-drop={self.accuracy_drop}",
            f"--drift={self.drift}",
        ]


HEALTHY = Degradation()


class ModelService:
    """What the HTTP handler calls: prediction with degradations, feedback, metrics."""

    def __init__(
        self,
        version: str,
        seed: int,
        degradation: Degradation = HEALTHY,
        latency_ms: float = 2.0,
        remember: int = 100_000,
        payload_logger: PayloadLogger | None = None,
    ) -> None:
        self.version = version
        self.payload_logger = payload_logger
        self.degradation = degradation
        self.latency_ms = latency_ms
        self.model = SoftmaxModel.train(seed)
        self.registry = CollectorRegistry()
        # Behind a payload logger the collector counts predictions: counting here too would double them.
        self.metrics = (
            None
            if payload_logger
            else ModelMetrics(version, self.registry, classes=CLASSES, features=FEATURES)
        )
        self.http_requests = Counter(
            "model_http_requests", "Prediction requests answered, by HTTP code.", ["version", "code"],
            registry=self.registry,
        )  # fmt: skip
        self._remember = remember
        self._predicted: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        # Seeded by version too, so two versions with one seed do not fail in lockstep.
        self._rng = np.random.default_rng([seed, *version.encode()])

    def delay_s(self, base_noise: float, extra_noise: float) -> float:
        """Lognormal service time: median ``latency_ms`` plus, if degraded, ``extra_latency_ms``."""
        ms = self.latency_ms * math.exp(0.3 * base_noise) if self.latency_ms > 0 else 0.0
        if self.degradation.extra_latency_ms > 0:
            ms += self.degradation.extra_latency_ms * math.exp(0.5 * extra_noise)
        return ms / 1000.0

    def predict(self, request_id: str, features: list[float]) -> tuple[int, dict[str, Any]]:
        """(HTTP code, JSON body) for one prediction request; sleeps for the service time."""
        with self._lock:
            u_error, u_wrong, u_drift = (float(v) for v in self._rng.random(3))
            base_noise, extra_noise = (float(v) for v in self._rng.standard_normal(2))
            offset = int(self._rng.integers(1, len(CLASSES)))
        time.sleep(self.delay_s(base_noise, extra_noise))
        if u_error < self.degradation.error_rate:
            return self._answered(500, {"error": "injected failure", "version": self.version})
        proba = self.model.predict_proba(np.asarray(features, dtype=np.float64))[0]
        index = int(proba.argmax())
        if u_wrong < self.degradation.accuracy_drop:
            index = (index + offset) % len(CLASSES)
        if u_drift < self.degradation.drift:
            index = CLASSES.index(DRIFT_CLASS)
        predicted, score = CLASSES[index], float(proba[index])
        answer = {"id": request_id, "class": predicted, "score": score, "version": self.version}
        if self.metrics is None:
            if self.payload_logger is not None:
                self.payload_logger.log(request_id, {"id": request_id, "features": features}, answer)
            return self._answered(200, answer)
        with self._lock:
            self._predicted[request_id] = predicted
            self._predicted.move_to_end(request_id)
            while len(self._predicted) > self._remember:
                self._predicted.popitem(last=False)
        self.metrics.observe_prediction(predicted, score, dict(zip(FEATURES, features, strict=True)))
        return self._answered(200, answer)

    def handle_predict(self, body: Any) -> tuple[int, dict[str, Any]]:
        """A ``/predict`` request's JSON body -> (HTTP code, JSON body); malformed ones get 400."""
        try:
            request_id, features = _parse_predict(body)
        except BadRequest as exc:
            return self._answered(400, {"error": str(exc)})
        return self.predict(request_id, features)

    def _answered(self, code: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.http_requests.labels(self.version, str(code)).inc()
        return code, body

    def feedback(self, items: list[tuple[str, str]]) -> dict[str, int]:
        """Count ground truth for ids this server predicted; each id counts at most once."""
        matched = 0
        assert self.metrics is not None, "no /feedback behind a payload logger"
        for request_id, actual in items:
            with self._lock:
                predicted = self._predicted.pop(request_id, None)
            if predicted is not None:
                self.metrics.observe_feedback(predicted, actual)
                matched += 1
        return {"matched": matched, "unknown": len(items) - matched}

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)


class BadRequest(Exception):
    pass


def _parse_predict(body: Any) -> tuple[str, list[float]]:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise BadRequest('expected {"id": str, "features": [floats]}')
    features = body.get("features")
    if (
        not isinstance(features, list)
        or len(features) != len(FEATURES)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in features)
    ):
        raise BadRequest(f"features must be a list of {len(FEATURES)} numbers ({', '.join(FEATURES)})")
    return body["id"], [float(v) for v in features]


def _parse_feedback(body: Any) -> list[tuple[str, str]]:
    raw = body.get("items", [body]) if isinstance(body, dict) else None
    if not isinstance(raw, list):
        raise BadRequest('expected {"id", "actual"} or {"items": [{"id", "actual"}, ...]}')
    items = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str)
            or item.get("actual") not in CLASSES
        ):
            raise BadRequest(f"each feedback needs a string id and an actual class in {list(CLASSES)}")
        items.append((item["id"], item["actual"]))
    return items


def make_handler(service: ModelService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: Envoy reuses upstream connections
        # Headers and body in one segment, sent at once: else Nagle plus delayed ACKs
        # add ~40 ms to a keep-alive request.
        wbufsize = -1
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would cost more than the model

        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header(VERSION_HEADER, service.version)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode())

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError as exc:
                raise BadRequest(f"body is not JSON: {exc}") from None

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, service.metrics_text(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._json(200, {"status": "ok", "version": service.version})
            else:
                self._json(404, {"error": f"no such path {self.path}"})

        def do_POST(self) -> None:
            try:
                body = self._body()
                if self.path == "/predict":
                    self._json(*service.handle_predict(body))
                elif self.path == "/feedback" and service.metrics is not None:
                    self._json(200, service.feedback(_parse_feedback(body)))
                else:
                    self._json(404, {"error": f"no such path {self.path}"})
            except BadRequest as exc:
                self._json(400, {"error": str(exc)})

    return Handler


class ModelHTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not hold up shutdown
    allow_reuse_address = True  # a restarted server can take its old port back


def serve(service: ModelService, host: str = "127.0.0.1", port: int = 0) -> ModelHTTPServer:
    return ModelHTTPServer((host, port), make_handler(service))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--version", required=True, help="the version label value, e.g. v1")
    parser.add_argument("--seed", type=int, default=1, help="training sample seed")
    parser.add_argument("--latency-ms", type=float, default=2.0, help="median service time")
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--extra-latency-ms", type=float, default=0.0)
    parser.add_argument("--accuracy-drop", type=float, default=0.0)
    parser.add_argument("--drift", type=float, default=0.0)
    parser.add_argument("--remember", type=int, default=100_000, help="predictions kept for feedback")
    parser.add_argument(
        "--payload-logger", metavar="URL", help="send KServe payload-logger CloudEvents here (no /feedback)"
    )
    args = parser.parse_args(argv)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # only the convention's series
    try:
        degradation = Degradation(args.error_rate, args.extra_latency_ms, args.accuracy_drop, args.drift)
    except ValueError as exc:
        parser.error(str(exc))
    # KServe's sidecar names the pod in ce-source; here the version is in the response anyway.
    logger = (
        PayloadLogger(args.payload_logger, "local-model", args.version, f"http://local-model-{args.version}/")
        if args.payload_logger
        else None
    )
    service = ModelService(args.version, args.seed, degradation, args.latency_ms, args.remember, logger)
    server = serve(service, args.host, args.port)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    host, port = server.server_address[:2]
    print(f"listening on http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        if logger is not None:
            logger.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
