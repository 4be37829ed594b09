"""The MLflow model registry over its REST API, without the mlflow package.

Endpoints (MLflow 2.x and 3.x, https://mlflow.org/docs/latest/api_reference/rest-api.html):

- ``GET  /api/2.0/mlflow/registered-models/alias?name=&alias=`` -> ``{"model_version": {...}}``
- ``GET  /api/2.0/mlflow/model-versions/get?name=&version=``    -> ``{"model_version": {...}}``
- ``POST /api/2.0/mlflow/registered-models/alias`` ``{name, alias, version}``
- ``POST /api/2.0/mlflow/model-versions/set-tag`` ``{name, version, key, value}``

Errors answer ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": ...}`` with a 4xx/5xx status.

Each call is ONE attempt that ends by its total deadline (``timeout_s``, whatever the server
does: :class:`mesh_canary.metrics.deadline_http.DeadlineClient`). Retrying is the caller's
(:mod:`mesh_canary.registry.announce`): a 4xx answer is `RegistryRefused` (retrying will not
help), anything else `RegistryUnavailable`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from mesh_canary.errors import CouldNotWork, Unreachable
from mesh_canary.metrics.deadline_http import DeadlineClient
from mesh_canary.protocols import ModelVersion
from mesh_canary.redact import redact, redact_url

__all__ = ["MlflowRegistry", "RegistryRefused", "RegistryUnavailable"]

API = "/api/2.0/mlflow"
MAX_TAG_VALUE = 5000  # MLflow's limit on a model version tag's value


class RegistryUnavailable(Unreachable):
    """The registry did not answer in time, or answered with a server error: worth another try."""


class RegistryRefused(CouldNotWork):
    """The registry refused the request (4xx: no such model, alias or version; not allowed)."""


class MlflowRegistry:
    def __init__(
        self,
        tracking_uri: str,
        *,
        timeout_s: float = 10.0,
        token: str | None = None,
        client: DeadlineClient | None = None,
    ) -> None:
        self.base = tracking_uri.rstrip("/")
        self.timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = client or DeadlineClient(headers=headers)

    @property
    def where(self) -> str:
        return f"the MLflow registry at {redact_url(self.base)}"

    def resolve(self, uri: str) -> ModelVersion:
        from mesh_canary.registry import parse_model_uri

        ref = parse_model_uri(uri)
        if ref.alias is not None:
            found = self._call("GET", "registered-models/alias", {"name": ref.name, "alias": ref.alias})
        else:
            found = self._call("GET", "model-versions/get", {"name": ref.name, "version": str(ref.version)})
        version = (found.get("model_version") or {}).get("version")
        if not version:
            raise RegistryRefused(f"{self.where} answered {uri} without a model version")
        return ModelVersion(uri, ref.name, str(version))

    def set_alias(self, model: ModelVersion, alias: str) -> None:
        self._call(
            "POST",
            "registered-models/alias",
            body={"name": model.name, "alias": alias, "version": model.version},
        )

    def set_tags(self, model: ModelVersion, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            body = {"name": model.name, "version": model.version, "key": key, "value": value[:MAX_TAG_VALUE]}
            self._call("POST", "model-versions/set-tag", body=body)

    def _call(
        self, method: str, path: str, params: Mapping[str, str] | None = None, body: Any = None
    ) -> dict[str, Any]:
        what = f"{method} {path}"
        content = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if content is not None else None
        try:
            answer = self._client.send(
                method,
                f"{self.base}{API}/{path}",
                params if params is not None else {},
                time.monotonic() + self.timeout_s,
                headers,
                content,
            )
        except CouldNotWork as e:
            raise RegistryUnavailable(
                f"{self.where} did not answer {what} within {self.timeout_s:g}s: {redact(str(e)) or type(e).__name__}"
            ) from None
        except Exception as e:  # httpcore.ProtocolError and the like: not an HTTP server
            raise RegistryUnavailable(f"{self.where} did not answer {what}: {type(e).__name__}") from None
        try:
            data = json.loads(answer.body or b"{}")
        except ValueError:
            data = None
        if answer.status >= 400 or not isinstance(data, dict):
            message = data.get("message") if isinstance(data, dict) else None
            text = (
                f"{self.where} answered {what} with HTTP {answer.status}: {redact(str(message or 'no JSON'))}"
            )
            if 400 <= answer.status < 500 and answer.status not in (408, 429):
                raise RegistryRefused(text)
            raise RegistryUnavailable(text)
        return data
