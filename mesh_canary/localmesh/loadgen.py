"""Labelled traffic through Envoy, with the ground truth posted back later.

    python -m mesh_canary.localmesh.loadgen --url http://127.0.0.1:PORT \
        --model v1=http://127.0.0.1:P1 --model v2=http://127.0.0.1:P2 \
        [--rate 100] [--duration 10] [--label-delay 1] [--missing 0] [--seed 7]

Each request's features come from the same synthetic data set the models were trained
on (mesh_canary.localmesh.dataset), so its true class is known. ``label_delay`` seconds
later the label is posted, in batches, to ``/feedback`` on EVERY model server: each counts
only the ids it predicted itself, which covers the server that answered (named by the
``x-model-version`` header) and also a candidate that saw a mirrored copy. A share
``missing`` of labels is never posted (ground truth that never arrives). Responses are
counted per answering version (``ok``, ``5xx``, ``other``; Envoy's own 503 with no version
header counts under ``unknown``). The generator always stops: after ``duration`` seconds,
or on ``stop()``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping

import httpx
import numpy as np

from mesh_canary.localmesh.dataset import CLASSES, sample
from mesh_canary.localmesh.model_server import VERSION_HEADER

SAMPLE_BLOCK = 1000  # rows drawn from the data set at a time


class LoadGenerator:
    """Sends ``rate`` requests/s from ``threads`` workers until ``duration`` or ``stop()``."""

    def __init__(
        self,
        envoy_url: str,
        model_urls: Mapping[str, str],
        *,
        rate: float = 100.0,
        duration_s: float | None = None,
        label_delay_s: float = 1.0,
        missing: float = 0.0,
        seed: int = 7,
        threads: int = 4,
        timeout_s: float = 5.0,
        labels_url: str | None = None,
    ) -> None:
        """``labels_url``: post labels to this collector's /labels instead of every model
        server's /feedback."""
        if rate <= 0 or threads < 1 or not 0.0 <= missing <= 1.0:
            raise ValueError("rate must be positive, threads at least 1 and missing between 0 and 1")
        self.envoy_url = envoy_url.rstrip("/")
        self.model_urls = {v: u.rstrip("/") for v, u in model_urls.items()}
        self.rate = rate
        self.duration_s = duration_s
        self.label_delay_s = label_delay_s
        self.missing = missing
        self.threads = threads
        self.timeout_s = timeout_s
        self.labels_url = labels_url.rstrip("/") if labels_url else None
        self._rng = np.random.default_rng(seed)
        self._rows: deque[tuple[list[float], str, bool]] = deque()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._deadline: float | None = None
        self._labels: deque[tuple[float, str, str]] = deque()  # (due, id, actual)
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "5xx": 0, "other": 0})
        self._senders_done = 0
        self.sent = 0
        self.failed = 0  # no answer at all (connection error, timeout)
        self.labels_posted = 0

    def _next(self) -> tuple[str, list[float], str, bool]:
        with self._lock:
            if not self._rows:
                x, y = sample(self._rng, SAMPLE_BLOCK)
                posted = self._rng.random(SAMPLE_BLOCK) >= self.missing
                self._rows.extend(
                    (row.tolist(), CLASSES[int(c)], bool(p)) for row, c, p in zip(x, y, posted, strict=True)
                )
            features, actual, post_label = self._rows.popleft()
            return f"req-{next(self._ids)}", features, actual, post_label

    def start(self) -> LoadGenerator:
        if self._workers:
            raise RuntimeError("this load generator was already started")
        self._deadline = None if self.duration_s is None else time.monotonic() + self.duration_s
        self._workers = [
            threading.Thread(target=self._send_loop, args=(i,), name=f"loadgen-{i}", daemon=True)
            for i in range(self.threads)
        ]
        self._workers.append(threading.Thread(target=self._label_loop, name="loadgen-labels", daemon=True))
        for worker in self._workers:
            worker.start()
        return self

    def _send_loop(self, index: int) -> None:
        interval = self.threads / self.rate
        next_at = time.monotonic() + index * interval / self.threads
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._deadline is not None and now >= self._deadline:
                    break
                if next_at > now:
                    self._stop.wait(next_at - now)
                    continue
                next_at = max(next_at + interval, now - interval)  # fall behind by one at most
                self._send_one(client)
        # The last sender out lets the label poster drain and finish.
        with self._lock:
            self._senders_done += 1

    def _send_one(self, client: httpx.Client) -> None:
        request_id, features, actual, post_label = self._next()
        try:
            response = client.post(f"{self.envoy_url}/predict", json={"id": request_id, "features": features})
        except httpx.HTTPError:
            with self._lock:
                self.sent += 1
                self.failed += 1
            return
        version = response.headers.get(VERSION_HEADER, "unknown")
        outcome = "ok" if response.status_code == 200 else "5xx" if response.status_code >= 500 else "other"
        with self._lock:
            self.sent += 1
            self._counts[version][outcome] += 1
            if post_label and response.status_code == 200:
                self._labels.append((time.monotonic() + self.label_delay_s, request_id, actual))

    def _label_loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                with self._lock:
                    senders_done = self._senders_done >= self.threads
                    now = time.monotonic()
                    due = []
                    while self._labels and (self._labels[0][0] <= now or self._stop.is_set()):
                        due.append(self._labels.popleft())
                    pending = bool(self._labels)
                if due:
                    self._post_labels(client, [{"id": i, "actual": a} for _, i, a in due])
                if (self._stop.is_set() or senders_done) and not pending:
                    return
                time.sleep(0.05)

    def _post_labels(self, client: httpx.Client, items: list[dict[str, str]]) -> None:
        if self.labels_url is not None:
            posts: list[tuple[str, object]] = [
                (f"{self.labels_url}/labels", [{"id": i["id"], "label": i["actual"]} for i in items])
            ]
        else:
            posts = [(f"{url}/feedback", {"items": items}) for url in self.model_urls.values()]
        for url, body in posts:
            # A model server (or collector) that is down loses its labels, as it would in production.
            with contextlib.suppress(httpx.HTTPError):
                client.post(url, json=body)
        with self._lock:
            self.labels_posted += len(items)

    def stop(self) -> None:
        """Stop sending now; labels still pending are posted at once. Waits for the threads."""
        self._stop.set()
        self.join()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the run to end (by ``duration`` or ``stop()``) and its last labels to be posted."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))

    @property
    def running(self) -> bool:
        return any(w.is_alive() for w in self._workers)

    def counts(self) -> dict[str, dict[str, int]]:
        """Responses so far by answering version: {"v1": {"ok": n, "5xx": n, "other": n}, ...}."""
        with self._lock:
            return {v: dict(c) for v, c in self._counts.items()}

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _model_arg(text: str) -> tuple[str, str]:
    version, sep, url = text.partition("=")
    if not sep or not version or not url:
        raise argparse.ArgumentTypeError(f"{text!r} is not VERSION=URL")
    return version, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Envoy's listener, e.g. http://127.0.0.1:10000")
    parser.add_argument(
        "--model", type=_model_arg, action="append", default=[], help="VERSION=URL of a model server"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds to run")
    parser.add_argument("--label-delay", type=float, default=1.0, help="seconds before a label is posted")
    parser.add_argument("--missing", type=float, default=0.0, help="share of labels never posted")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    generator = LoadGenerator(
        args.url, dict(args.model), rate=args.rate, duration_s=args.duration, label_delay_s=args.label_delay,
        missing=args.missing, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    started = time.monotonic()
    generator.start()
    try:
        generator.join()
    except KeyboardInterrupt:
        generator.stop()
    elapsed = time.monotonic() - started
    summary = {
        "sent": generator.sent,
        "failed": generator.failed,
        "seconds": round(elapsed, 2),
        "ratePerSecond": round(generator.sent / elapsed, 1) if elapsed else 0.0,
        "labelsPosted": generator.labels_posted,
        "byVersion": generator.counts(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
