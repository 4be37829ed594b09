"""Notifier writing Kubernetes Events about a ModelRollout (what `kubectl describe` shows).

One core/v1 Event per announcement: involvedObject the ModelRollout, reason the
announcement's kind (StepAdvanced, Promoted, RolledBack, ...), type Warning for warnings
and Normal otherwise. Best effort: an Event that cannot be written is logged, never raised
(wrap it in a BackgroundNotifier so that a slow API server cannot delay the loop either).
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes.client

from mesh_canary.kube.errors import is_transport_error, kube_error
from mesh_canary.present.view import rfc3339
from mesh_canary.protocols import Announcement

log = logging.getLogger("mesh_canary.kube_events")

COMPONENT = "mesh-canary-controller"
MESSAGE_LIMIT = 1024


_iso = rfc3339  # the one spelling of a time (mesh_canary.present.view)


def event_body(
    announcement: Announcement,
    involved: Mapping[str, Any],
    *,
    now: float,
    component: str = COMPONENT,
    instance: str = "",
) -> dict[str, Any]:
    """The core/v1 Event for one announcement about ``involved`` (pure)."""
    name = str(involved["name"])
    stamp = _iso(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            # Like the API server's own: the object's name and a unique suffix.
            "name": f"{name}.{int(now * 1e9):x}{uuid.uuid4().hex[:4]}",
            "namespace": involved["namespace"],
        },
        "involvedObject": {k: v for k, v in involved.items() if v is not None},
        "reason": announcement.kind,
        "message": announcement.message[:MESSAGE_LIMIT],
        "type": "Warning" if announcement.severity == "warning" else "Normal",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
        "source": {"component": component, **({"host": instance} if instance else {})},
        "reportingComponent": component,
        "reportingInstance": instance or component,
    }


class KubeEventNotifier:
    """Writes each announcement as an Event on one ModelRollout."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        involved: Mapping[str, Any],
        *,
        component: str = COMPONENT,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
        request_timeout_s: float = 5.0,
    ) -> None:
        """``involved``: the object reference (apiVersion, kind, name, namespace, uid)."""
        self.involved = dict(involved)
        self.component = component
        self.instance = instance if instance is not None else socket.gethostname()
        self.written = 0
        self.failed = 0
        self._api = kubernetes.client.CoreV1Api(api_client)
        self._clock = clock
        self._timeout = request_timeout_s

    def notify(self, announcement: Announcement) -> None:
        try:
            body = event_body(
                announcement,
                self.involved,
                now=self._clock(),
                component=self.component,
                instance=self.instance,
            )
            event: Any = kubernetes.client.CoreV1Event.from_dict(body)
            self._api.create_namespaced_event(
                self.involved["namespace"],
                event,
                _request_timeout=self._timeout,
            )
            self.written += 1
        except Exception as e:  # best effort: an Event is never worth failing a rollout
            self.failed += 1
            log.warning(
                "could not write the %s Event for %s/%s: %s",
                announcement.kind,
                self.involved.get("namespace"),
                self.involved.get("name"),
                kube_error(e, "creating the Event").detail if is_transport_error(e) else e,
            )
