"""What KServe's logger sidecar does, for the local model servers: every prediction's request
and response as binary-mode CloudEvents (``ce-type`` org.kubeflow.serving.inference.request
/ .response, ``ce-id`` = the request id, the extensions ``inferenceservicename``,
``namespace``, ``component``, ``endpoint``), sent asynchronously to a URL (the collector).

As in KServe, logging never slows or fails a prediction: events go through a bounded
queue to one sender thread; when the queue is full or the receiver is down, events are
dropped and counted (``dropped``), never retried (the collector then reports those
predictions' labels as unmatched). Each POST has ``timeout_s`` in all.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from typing import Any

import httpx

from mesh_canary.collector.events import REQUEST_TYPE, RESPONSE_TYPE

QUEUE_SIZE = 10_000


class PayloadLogger:
    def __init__(
        self,
        url: str,
        inference_service: str,
        endpoint: str,
        source: str,
        namespace: str = "local",
        timeout_s: float = 2.0,
    ) -> None:
        self.url = url
        self.attributes = {
            "inferenceservicename": inference_service,
            "namespace": namespace,
            "component": "predictor",
            "endpoint": endpoint,
        }
        self.source = source
        self.timeout_s = timeout_s
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue(QUEUE_SIZE)
        self.sent = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="payload-logger", daemon=True)
        self._thread.start()

    def log(self, request_id: str, request: Any, response: Any) -> None:
        """Queue the request and response events of one prediction; never blocks."""
        for event_type, body in ((REQUEST_TYPE, request), (RESPONSE_TYPE, response)):
            try:
                self._queue.put_nowait((request_id, event_type, json.dumps(body).encode()))
            except queue.Full:
                with self._lock:
                    self.dropped += 1

    def _run(self) -> None:
        from cloudevents.core.bindings.http import to_binary_event
        from cloudevents.core.v1.event import CloudEvent

        with httpx.Client(timeout=httpx.Timeout(self.timeout_s)) as client:
            while (item := self._queue.get()) is not None:
                request_id, event_type, body = item
                event = CloudEvent(
                    attributes={
                        "id": request_id,
                        "type": event_type,
                        "source": self.source,
                        "datacontenttype": "application/json",
                        **self.attributes,
                    },
                    data=body,
                )
                message = to_binary_event(event)
                ok = False
                with contextlib.suppress(httpx.HTTPError):
                    ok = (
                        client.post(self.url, headers=message.headers, content=message.body).status_code
                        == 200
                    )
                with self._lock:
                    if ok:
                        self.sent += 1
                    else:
                        self.dropped += 1

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then stop."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
