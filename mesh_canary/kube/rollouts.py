"""ModelRollout resources through the Kubernetes API: the client layer the `rollout` verbs use.

Only this module and the other kube adapters talk to the API; their failures are one type,
`mesh_canary.kube.errors.KubeError`, which the CLI turns into its one sentence and exit code.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_canary.kube.errors import KubeError, kube_error, raise_api_error
from mesh_canary.kube.names import GROUP, PLURAL, VERSION

__all__ = [
    "KubeError",
    "RolloutClient",
    "api_client",
    "context_namespace",
    "json_api_client",
    "read_secret_key",
]


def api_client(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient from a kubeconfig, or from the pod's service account inside a cluster."""
    import importlib
    import os

    import kubernetes.client

    config: Any = importlib.import_module("kubernetes.config")  # untyped
    default = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if not (kubeconfig or context or default.exists() or in_cluster):
        raise KubeError(
            f"no Kubernetes configuration: give --kubeconfig, set KUBECONFIG, or create {default}"
        )
    configuration = kubernetes.client.Configuration()
    # One attempt per call: callers own retries and deadlines (the runner, the informer),
    # and urllib3's own retries print a warning per attempt before the one-line error.
    configuration.retries = 0
    try:
        if kubeconfig or context or default.exists():
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
        return json_api_client(configuration)
    except Exception as e:
        raise KubeError(f"cannot load the Kubernetes configuration: {e}") from e


def json_api_client(configuration: Any = None) -> Any:
    """An ApiClient that sends plain JSON bodies as they are (`_json_api_client_class`)."""
    return _json_api_client_class()(configuration)


@functools.cache
def _json_api_client_class() -> Any:
    """The official client walks every request body in Python to turn models, dates and enums
    into JSON (``sanitize_for_serialization``). A status patch or a VirtualService replace is a
    tree of plain dicts, and that walk was the controller's largest single CPU cost at 1,000
    rollouts. A body the C JSON encoder takes as it is needs no walk (it is encoded again,
    unchanged, when sent); anything else (a model, a date) goes the client's way."""
    import json

    import kubernetes.client

    class JsonApiClient(kubernetes.client.ApiClient):  # type: ignore[misc]
        def sanitize_for_serialization(self, obj: Any) -> Any:
            if type(obj) is dict or type(obj) is list:
                try:
                    json.dumps(obj)
                except (TypeError, ValueError):
                    pass
                else:
                    return obj
            return super().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    return JsonApiClient


def context_namespace(kubeconfig: str | None, context: str | None) -> str:
    import importlib

    config: Any = importlib.import_module("kubernetes.config")  # untyped

    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:
        return "default"
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


class RolloutClient:
    """The ModelRollout calls the `rollout` verbs make (create/replace, read, list, annotate)."""

    def __init__(
        self, kubeconfig: str | None, context: str | None, namespace: str | None, *, client: Any = None
    ) -> None:
        """``client``: an ApiClient already made (the controller's), else one from the kubeconfig."""
        import kubernetes.client

        self.api: Any = kubernetes.client.CustomObjectsApi(client or api_client(kubeconfig, context))
        self.namespace = namespace or ("default" if client else context_namespace(kubeconfig, context))
        self.gvp = (GROUP, VERSION)
        self.plural = PLURAL

    def ref(self, name: str, namespace: str | None = None) -> str:
        return f"modelrollout {namespace or self.namespace}/{name}"

    def get(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = namespace or self.namespace
        try:
            return dict(
                self.api.get_namespaced_custom_object(*self.gvp, ns, self.plural, name, _request_timeout=15)
            )
        except Exception as e:
            raise_api_error(e, self.ref(name, ns))

    def list(self, all_namespaces: bool = False) -> list[dict[str, Any]]:
        try:
            if all_namespaces:
                result: Any = self.api.list_cluster_custom_object(*self.gvp, self.plural, _request_timeout=15)
            else:
                result = self.api.list_namespaced_custom_object(
                    *self.gvp, self.namespace, self.plural, _request_timeout=15
                )
        except Exception as e:
            raise_api_error(
                e, f"listing modelrollouts in {'all namespaces' if all_namespaces else self.namespace}"
            )
        return [dict(i) for i in result.get("items", [])]

    def apply(self, doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Create the resource, or replace its spec, labels and annotations; returns (object, what happened)."""
        name = doc["metadata"]["name"]
        for _ in range(5):
            created = self._unless_conflict(
                name,
                lambda: self.api.create_namespaced_custom_object(
                    *self.gvp, self.namespace, self.plural, doc, _request_timeout=15
                ),
            )
            if created is not None:
                return dict(created), "created"
            live = self.get(name)
            meta = dict(live["metadata"])
            if live.get("spec") == doc.get("spec") and all(
                (meta.get(k) or {}).get(a) == v
                for k in ("labels", "annotations")
                for a, v in (doc["metadata"].get(k) or {}).items()
            ):
                return live, "unchanged"
            body = copy.deepcopy(doc)
            new_meta = body["metadata"]
            # Keep what others own: the controller's finalizer, handled orders, other annotations.
            for key in ("resourceVersion", "finalizers", "uid"):
                if key in meta:
                    new_meta[key] = meta[key]
            new_meta["annotations"] = {
                **(meta.get("annotations") or {}),
                **(new_meta.get("annotations") or {}),
            }
            new_meta["labels"] = {**(meta.get("labels") or {}), **(new_meta.get("labels") or {})}
            replaced = self._unless_conflict(
                name,
                functools.partial(
                    self.api.replace_namespaced_custom_object,
                    *self.gvp,
                    self.namespace,
                    self.plural,
                    name,
                    body,
                    _request_timeout=15,
                ),
            )
            if replaced is not None:
                return dict(replaced), "configured"
        raise KubeError(f"{self.ref(name)}: kept changing while being applied; try again")

    def _unless_conflict(self, name: str, call: Callable[[], Any]) -> Any | None:
        """The call's answer, or None on 409 Conflict (someone wrote first: read again)."""
        try:
            return call()
        except Exception as e:
            error = kube_error(e, self.ref(name))
            if not error.conflict:
                raise error from e
        return None

    def annotate(self, name: str, key: str, value: str) -> dict[str, Any]:
        body = {"metadata": {"annotations": {key: value}}}
        try:
            return dict(
                self.api.patch_namespaced_custom_object(
                    *self.gvp, self.namespace, self.plural, name, body, _request_timeout=15
                )
            )
        except Exception as e:
            raise_api_error(e, self.ref(name))


def read_secret_key(client: Any, namespace: str, name: str, key: str) -> str | None:
    """One key of a Secret, decoded; None when the Secret or the key is missing.

    The controller needs `get` on that Secret only: grant it with a namespaced Role naming
    the Secret (resourceNames), not cluster-wide (see docs/controller.md).
    """
    import base64

    import kubernetes.client

    try:
        secret: Any = kubernetes.client.CoreV1Api(client).read_namespaced_secret(
            name, namespace, _request_timeout=10
        )
    except Exception as e:
        error = kube_error(e, f"secret {namespace}/{name}")
        if error.not_found:
            return None
        raise error from e
    value = (secret.data or {}).get(key)
    return None if value is None else base64.b64decode(value).decode().strip()
