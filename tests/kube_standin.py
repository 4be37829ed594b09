"""A Kubernetes API stand-in for the tests: kmock, extended with what a controller relies on.

kmock 0.8 gives the HTTP server, request parsing (group/version/plural/namespace/name/
subresource), API discovery (``/api``, ``/apis``, ``/apis/<group>/<version>``), Status error
bodies and its request DSL (tests can intercept a request, see `KubeStandIn.call`). Its
in-memory emulator merges every write into a dict and nothing more, so this module serves
the object endpoints itself, as kmock fallbacks:

- ``resourceVersion`` (one counter, like etcd's revision), ``uid``, ``creationTimestamp``,
  ``generation`` (bumped when anything but metadata/status changes);
- 409 Conflict for a stale ``metadata.resourceVersion`` on PUT and PATCH, 409
  AlreadyExists on create, 404 NotFound with a real Status body;
- PUT replace; merge patch (a JSON list sent as merge patch is a 400), JSON patch (RFC
  6902), strategic merge patch for built-in kinds only (applied as a merge patch), 415 for
  the rest, as for custom resources on a real server;
- lists with ``kind``/``apiVersion``/``resourceVersion``, label and field selectors;
- watch streams (JSON lines, ``application/json``) that resume after ``resourceVersion``
  and end after ``timeoutSeconds``;
- a separate ``/status`` subresource: writes to the object keep the status, status writes
  keep everything else;
- every write to a CRD-defined kind is defaulted and validated against the CRD's schema
  (422 Invalid with ``causes``, as a real API server answers); creating a
  CustomResourceDefinition registers its kind (a non-structural schema is a 422), so
  ``kubectl apply -f crd.yaml`` works;
- ``Accept: application/json;as=Table`` answers a Table with the CRD's printer columns
  (what ``kubectl get`` prints);
- Leases (coordination.k8s.io/v1), Events (core v1 and events.k8s.io/v1), Namespaces, Secrets.

Not emulated: authentication, admission webhooks, server-side apply, ``deletecollection``,
garbage collection, CEL rules other than those Istio's CRDs use and the Gateway API's
backendRef rule (see crd_schema.py).
Unknown fields are rejected (kubectl's ``fieldValidation=Strict``), not pruned.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import copy
import datetime
import functools
import json
import pathlib
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp.web
import kmock
import kubernetes.client
import yaml
from kmock import KubernetesError, KubernetesScaffold, resource
from kmock._internal.rendering import Response

from mesh_canary.kube.rollouts import json_api_client
from tests.crd_schema import CrdValidator, structural_problems

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
T = TypeVar("T")


_VALIDATORS: dict[str, tuple[Mapping[str, Any], CrdValidator]] = {}


def _validator(crd: Mapping[str, Any]) -> CrdValidator:
    # Building a validator for Istio's CRDs takes ~0.1 s: reuse it while the CRD is unchanged.
    name = crd["metadata"]["name"]
    cached = _VALIDATORS.get(name)
    if cached is None or cached[0] != crd:
        cached = (copy.deepcopy(dict(crd)), CrdValidator(crd))
        _VALIDATORS[name] = cached
    return cached[1]


@dataclass
class Kind:
    kind: str
    namespaced: bool
    builtin: bool = True  # built-in kinds allow updates without a resourceVersion
    status_subresource: bool = False
    validator: CrdValidator | None = None
    columns: list[dict[str, Any]] = field(default_factory=list)
    schema: dict[str, Any] | None = None  # the CRD's OpenAPI schema, for defaulting


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(timestamp: str) -> str:
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    s = max(0, int((datetime.datetime.now(datetime.UTC) - then).total_seconds()))
    return (
        f"{s}s"
        if s < 120
        else f"{s // 60}m"
        if s < 7200
        else f"{s // 3600}h"
        if s < 172800
        else f"{s // 86400}d"
    )


def _header(request: kmock.Request, name: str) -> str:
    # kmock keeps the headers as a plain dict: look them up case-insensitively.
    return next((v for k, v in request.headers.items() if k.lower() == name.lower()), "")


def _verb(method: str, request: kmock.Request) -> str:
    """The Kubernetes verb of a request (what RBAC and the API server's metrics call it)."""
    if method == "GET":
        if request.params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if request.name is not None else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method)


def _error(code: int, reason: str, message: str, **details: Any) -> KubernetesError:
    return KubernetesError(status=code, reason=reason, message=message, details=details or {})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(doc)

    def locate(ptr: str) -> tuple[Any, Any]:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in ptr.split("/")[1:]]
        if not parts:
            raise ValueError("the whole object cannot be patched")
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        key = parts[-1]
        return parent, (len(parent) if key == "-" else int(key)) if isinstance(parent, list) else key

    def get(ptr: str) -> Any:
        parent, key = locate(ptr)
        return parent[key]

    def add(ptr: str, value: Any) -> None:
        parent, key = locate(ptr)
        if isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        else:
            parent[key] = copy.deepcopy(value)

    def remove(ptr: str) -> Any:
        parent, key = locate(ptr)
        return parent.pop(key)

    for op in ops:
        try:
            kind, path = op["op"], op["path"]
            if kind == "test" and get(path) != op["value"]:
                raise _error(422, "Invalid", f"the JSON patch test of {path} failed")
            if kind == "remove":
                remove(path)
            elif kind == "add":
                add(path, op["value"])
            elif kind == "replace":
                remove(path)
                add(path, op["value"])
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, get(op["from"]))
            elif kind != "test":
                raise _error(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise _error(422, "Invalid", f"the JSON patch operation {op} cannot be applied: {e!r}") from e
    return doc


def apply_defaults(obj: Any, schema: Mapping[str, Any]) -> None:
    """Fill in the schema's ``default`` values in place, as the API server does on every write."""
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                apply_defaults(obj[name], sub)
        if isinstance(schema.get("additionalProperties"), Mapping):
            for value in obj.values():
                apply_defaults(value, schema["additionalProperties"])
    elif isinstance(obj, list) and isinstance(schema.get("items"), Mapping):
        for item in obj:
            apply_defaults(item, schema["items"])


def _json_path(obj: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        elif isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


def _selected(obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
    meta = obj.get("metadata", {})
    labels = meta.get("labels") or {}
    for term in filter(None, params.get("labelSelector", "").split(",")):
        if m := re.fullmatch(r"\s*([^!=\s]+)\s*(==|=|!=)\s*(\S*)\s*", term):
            key, op, value = m.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif term.strip().startswith("!"):
            if term.strip()[1:] in labels:
                return False
        elif term.strip() not in labels:
            return False
    for term in filter(None, params.get("fieldSelector", "").split(",")):
        key, _, value = term.partition("=")
        neg = key.endswith("!")
        if (str(_json_path(obj, key.rstrip("!="))) == value.lstrip("=")) == neg:
            return False
    return True


class KubeApi(KubernetesScaffold):
    """The kmock handler: discovery from kmock, objects served by the methods below."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.kinds: dict[resource, Kind] = {}
        self.objects = kmock.ObjectsArray()  # with every version kept, for assertions
        self.revision = 0
        self.log: list[tuple[int, resource, dict[str, Any]]] = []
        # Every successful write: (resourceVersion, plural[/subresource], namespace, name, User-Agent).
        self.writers: list[tuple[int, str, str | None, str, str]] = []
        self.changed = asyncio.Condition()
        self.write_lock = asyncio.Lock()
        # For benchmarks (bench/controller_scale.py): requests by (verb, plural), and the wall
        # time (time.time()) each revision was committed at.
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.committed_at: dict[int, float] = {}
        # kmock keeps every request and matches each new one against that history (for its
        # DSL's slices): the cost of a request grows with the requests before it. A benchmark
        # sending a hundred thousand of them turns that off (no DSL interception then).
        self.keep_requests = True
        self.stopping = False
        self.fallback[self._is_object_request] << self._serve
        for res, kind, namespaced in [
            ("v1/events", "Event", True),
            ("events.k8s.io/v1/events", "Event", True),
            ("coordination.k8s.io/v1/leases", "Lease", True),
            ("v1/namespaces", "Namespace", False),
            ("v1/secrets", "Secret", True),  # a webhook URL from a Secret (urlFrom.secretKeyRef)
            ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
        ]:
            self.register(resource(res), Kind(kind, namespaced))

    async def _render_error(self, exc: Exception) -> Any:
        if not isinstance(exc, KubernetesError):
            return await super()._render_error(exc)
        return aiohttp.web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "code": exc.status,
                "reason": exc.reason,
                "message": exc.message,
                **({"details": exc.details} if exc.details else {}),
            },
            status=exc.status,
        )

    async def _serve_version(self, request: kmock.Request) -> Any:
        # kmock lists a subresource like its parent (short names, all verbs): kubectl would then
        # warn that "vs" may mean virtualservices/status. Describe it as a real server does.
        listing: Any = await super()._serve_version(request)
        for entry in listing["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], singularName="", verbs=["get", "patch", "update"])
        return listing

    def register(
        self,
        res: resource,
        kind: Kind,
        short: Sequence[str] = (),
        singular: str | None = None,
        categories: Sequence[str] = (),
    ) -> None:
        self.kinds[res] = kind
        self.resources[res] = kmock.ResourceInfo(
            kind=kind.kind,
            namespaced=kind.namespaced,
            singular=singular or kind.kind.lower(),
            verbs=VERBS,
            shortnames=short,
            categories=categories,
            subresources=["status"] if kind.status_subresource else [],
        )

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CRD's storage version (one version per resource, as kmock keys objects)."""
        spec = crd["spec"]
        for version in spec["versions"]:
            problems = structural_problems(version["schema"]["openAPIV3Schema"])
            if problems:
                raise _error(
                    422,
                    "Invalid",
                    f"CustomResourceDefinition {crd['metadata']['name']!r} is invalid: "
                    + "; ".join(problems[:5]),
                    name=crd["metadata"]["name"],
                )
        validator = _validator(crd)
        entry = next(v for v in spec["versions"] if v.get("storage"))
        names = spec["names"]
        self.register(
            resource(spec["group"], entry["name"], names["plural"]),
            Kind(
                names["kind"],
                spec.get("scope", "Namespaced") == "Namespaced",
                builtin=False,
                status_subresource="status" in (entry.get("subresources") or {}),
                validator=validator,
                columns=list(entry.get("additionalPrinterColumns") or []),
                schema=entry["schema"]["openAPIV3Schema"],
            ),
            short=names.get("shortNames", ()),
            singular=names.get("singular"),
            categories=names.get("categories", ()),
        )

    def _is_object_request(self, request: kmock.Request) -> bool:
        return request.resource is not None and request.resource.plural is not None

    # ---- dispatch -------------------------------------------------------------------

    def _serve(self, request: kmock.Request) -> Any:
        res = request.resource
        kind = self.kinds.get(res) if res is not None else None
        if res is None or kind is None:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        if request.subresource not in (None, "status") or (
            request.subresource and not kind.status_subresource
        ):
            raise _error(
                404, "NotFound", f"the server could not find the requested resource ({request.subresource})"
            )
        method = request.method.value
        if not self.keep_requests:
            self._forget_requests()
        self.requests[_verb(method, request), "/".join(filter(None, [res.plural, request.subresource]))] += 1
        if method == "GET" and request.params.get("watch") in ("true", "1"):
            return Response(
                status=200,
                headers={"Content-Type": "application/json"},
                payload=self._watch(request, res, kind),
            )
        if method == "GET":
            return self._respond(self._get(request, res, kind), 200)
        if method == "POST" and request.name is None:
            return self._respond(self._create(request, res, kind), 201, request)
        if method in ("PUT", "PATCH") and request.name is not None:
            return self._respond(self._update(request, res, kind), 200, request)
        if method == "DELETE" and request.name is not None:
            return self._respond(self._delete(request, res, kind), 200, request)
        raise _error(405, "MethodNotAllowed", f"{method} is not supported on {request.url.path}")

    def _forget_requests(self) -> None:
        # kmock's private lists: the root's record of requests and each reaction's.
        del self._requests[:-1]
        for payload in self._payloads:
            del payload._requests[:]

    async def _respond(self, coro: Any, status: int, write: kmock.Request | None = None) -> Any:
        # One write at a time, from its read of the stored object to its commit: a write
        # can never slip between another's resourceVersion check and its store.
        async with self.write_lock:
            body = await coro
            meta = (body.get("metadata") or {}) if write is not None and isinstance(body, dict) else {}
            if write is not None and write.resource is not None and meta.get("resourceVersion"):
                self.writers.append(
                    (
                        int(meta["resourceVersion"]),
                        f"{write.resource.plural}{'/' + write.subresource if write.subresource else ''}",
                        meta.get("namespace"),
                        str(meta.get("name")),
                        _header(write, "User-Agent"),
                    )
                )
        # NB: kmock merges a reaction's headers across responses: always set the same ones.
        return Response(status=status, headers={"Content-Type": "application/json"}, payload=body)

    def _key(self, request: kmock.Request, res: resource, kind: Kind, name: str | None = None) -> Any:
        if kind.namespaced and request.namespace is None:
            raise _error(404, "NotFound", "a namespaced resource needs a namespace in the path")
        return (res, request.namespace if kind.namespaced else None, name or request.name)

    def _current(self, key: Any, kind: Kind) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return dict(copy.deepcopy(self.objects[key].raw))

    def _not_found(self, key: Any) -> KubernetesError:
        res = key[0]
        what = f"{res.plural}.{res.group}" if res.group else res.plural
        return _error(
            404, "NotFound", f'{what} "{key[2]}" not found', name=key[2], group=res.group, kind=res.plural
        )

    # ---- reads ----------------------------------------------------------------------

    async def _get(self, request: kmock.Request, res: resource, kind: Kind) -> dict[str, Any]:
        table = "as=Table" in _header(request, "Accept")
        if request.name is not None:
            obj = self._current(self._key(request, res, kind), kind)
            if obj is None:
                raise self._not_found(self._key(request, res, kind))
            return self._table(kind, [obj]) if table else obj
        items = [
            copy.deepcopy(o.raw)
            for (r, ns, _), o in self.objects.items()
            if r == res and not o.deleted and (request.namespace is None or ns == request.namespace)
        ]
        items = [o for o in items if _selected(o, request.params)]
        if table:
            return self._table(kind, items)
        api_version = f"{res.group}/{res.version}" if res.group else res.version
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(self.revision)},
            "items": items,
        }

    def _table(self, kind: Kind, items: list[dict[str, Any]]) -> dict[str, Any]:
        columns = kind.columns or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        defs = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        defs += [
            {
                "name": c["name"],
                "type": c["type"],
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for c in columns:
                value = _json_path(obj, c["jsonPath"])
                if value is not None and c["type"] == "date":
                    value = _age(value)
                elif isinstance(value, (dict, list)):
                    value = json.dumps(value)
                cells.append(value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.revision)},
            "columnDefinitions": defs,
            "rows": rows,
        }

    async def _watch(self, request: kmock.Request, res: resource, kind: Kind) -> AsyncIterator[Any]:
        yield b""  # kmock sends the headers with the first chunk: send them now
        loop = asyncio.get_running_loop()
        timeout = request.params.get("timeoutSeconds")
        deadline = loop.time() + float(timeout) if timeout else None
        since = request.params.get("resourceVersion") or "0"
        name = request.name

        def wanted(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (name is None or meta.get("name") == name)
                and _selected(obj, request.params)
            )

        if since == "0":
            cursor = self.revision
            for (r, _, _), o in list(self.objects.items()):
                if r == res and not o.deleted and wanted(o.raw):
                    yield {"type": "ADDED", "object": copy.deepcopy(o.raw)}
        else:
            cursor = int(since)
        while not self.stopping:
            # The log is in resourceVersion order: start after the cursor (not a scan of all of it,
            # which made every write cost O(writes so far) per watcher in benchmarks).
            start = bisect.bisect_right(self.log, cursor, key=lambda e: e[0])
            for rv, r, event in self.log[start:]:
                cursor = rv
                if r == res and wanted(event["object"]):
                    yield event
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            async with self.changed:
                try:
                    news = functools.partial(self._news_since, cursor)
                    await asyncio.wait_for(self.changed.wait_for(news), remaining)
                except TimeoutError:
                    return

    # ---- writes ---------------------------------------------------------------------

    async def _create(self, request: kmock.Request, res: resource, kind: Kind) -> dict[str, Any]:
        obj = self._body(request)
        if not isinstance(obj, dict):
            raise _error(400, "BadRequest", "the body of a create must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise _error(
                422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value: name is required"
            )
        if meta.get("resourceVersion"):
            raise _error(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        key = self._key(request, res, kind, meta["name"])
        if kind.namespaced and meta.get("namespace", key[1]) != key[1]:
            raise _error(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if self._current(key, kind) is not None:
            what = f"{res.plural}.{res.group}" if res.group else res.plural
            raise _error(409, "AlreadyExists", f'{what} "{meta["name"]}" already exists', name=meta["name"])
        if kind.status_subresource:
            obj.pop("status", None)  # a create cannot set the status
        return await self._commit(key, kind, obj, None)

    async def _update(self, request: kmock.Request, res: resource, kind: Kind) -> dict[str, Any]:
        key = self._key(request, res, kind)
        old = self._current(key, kind)
        if old is None:
            raise self._not_found(key)
        body = self._body(request)
        if request.method.value == "PUT":
            new = body
            if not isinstance(new, dict):
                raise _error(400, "BadRequest", "the body of a replace must be a JSON object")
            if not (new.get("metadata") or {}).get("resourceVersion") and not kind.builtin:
                raise _error(
                    422,
                    "Invalid",
                    f'{kind.kind} "{key[2]}" is invalid: metadata.resourceVersion: '
                    "Invalid value: 0x0: must be specified for an update",
                )
        else:
            new = self._patched(request, kind, old, body)
        meta = new.setdefault("metadata", {})
        if meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            what = f"{res.plural}.{res.group}" if res.group else res.plural
            raise _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {what} "{key[2]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                name=key[2],
                group=res.group,
                kind=res.plural,
            )
        if meta.get("name", key[2]) != key[2]:
            raise _error(400, "BadRequest", f"the name of the object ({meta['name']}) does not match the URL")
        if kind.status_subresource:
            # The object and its status are written separately, each keeping the other's part.
            status = new.get("status") if request.subresource == "status" else old.get("status")
            if request.subresource == "status":
                new = copy.deepcopy(old)
            new.pop("status", None)
            if status is not None:
                new["status"] = status
        return await self._commit(key, kind, new, old)

    def _patched(self, request: kmock.Request, kind: Kind, old: dict[str, Any], body: Any) -> dict[str, Any]:
        ctype = _header(request, "Content-Type").split(";")[0].strip()
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise _error(400, "BadRequest", "a JSON patch must be a list of operations")
            return dict(json_patch(old, body))
        if ctype == "application/merge-patch+json" or (
            ctype == "application/strategic-merge-patch+json" and kind.builtin
        ):
            if not isinstance(body, dict):
                raise _error(
                    400,
                    "BadRequest",
                    f"a merge patch must be a JSON object, not {type(body).__name__} "
                    "(send a JSON patch as application/json-patch+json)",
                )
            return dict(merge_patch(old, body))
        raise _error(
            415,
            "UnsupportedMediaType",
            f'the body of the request was in an unknown format ("{ctype}") - '
            "accepted media types include: application/json-patch+json, application/merge-patch+json",
        )

    async def _delete(self, request: kmock.Request, res: resource, kind: Kind) -> dict[str, Any]:
        key = self._key(request, res, kind)
        old = self._current(key, kind)
        if old is None:
            raise self._not_found(key)
        if old["metadata"].get("finalizers"):
            if not old["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                return await self._commit(key, kind, new, old)
            return old
        return await self._remove(key, kind, old)

    async def _remove(self, key: Any, kind: Kind, old: dict[str, Any]) -> dict[str, Any]:
        async with self.changed:
            self.revision += 1
            old["metadata"]["resourceVersion"] = str(self.revision)
            self.objects[key].delete()
            self.log.append((self.revision, key[0], {"type": "DELETED", "object": old}))
            if key[0] == resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
                spec = old["spec"]
                for r in [
                    r for r in self.kinds if r.group == spec["group"] and r.plural == spec["names"]["plural"]
                ]:
                    del self.kinds[r], self.resources[r]
            self.changed.notify_all()
        return old

    async def _commit(
        self, key: Any, kind: Kind, new: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        res = key[0]
        new["apiVersion"] = f"{res.group}/{res.version}" if res.group else res.version
        new["kind"] = kind.kind
        meta = new.setdefault("metadata", {})
        meta["name"] = key[2]
        if key[1] is not None:
            meta["namespace"] = key[1]
        if kind.schema is not None:
            apply_defaults(new, kind.schema)
        if kind.validator is not None:
            causes = kind.validator.errors(new)
            if causes:
                what = f"{kind.kind}.{res.group}" if res.group else kind.kind
                message = f'{what} "{key[2]}" is invalid: ' + ", ".join(
                    f"{p}: Invalid value: {m}" for p, m in causes
                )
                raise _error(
                    422,
                    "Invalid",
                    message,
                    name=key[2],
                    group=res.group,
                    kind=kind.kind,
                    causes=[{"reason": "FieldValueInvalid", "message": m, "field": p} for p, m in causes],
                )
        if res == resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
            self.install_crd(new)
            new["status"] = {
                "conditions": [
                    {"type": "Established", "status": "True"},
                    {"type": "NamesAccepted", "status": "True"},
                ],
                "acceptedNames": new["spec"]["names"],
                "storedVersions": [v["name"] for v in new["spec"]["versions"] if v.get("storage")],
            }
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        else:
            for k in ("uid", "creationTimestamp"):
                meta[k] = old["metadata"][k]
            ignored = {"metadata", "status"} if kind.status_subresource else {"metadata"}
            changed = any(
                new.get(k) != old.get(k) for k in (set(new) | set(old)) - ignored - {"apiVersion", "kind"}
            )
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if changed else 0)
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                return await self._remove(key, kind, new)
        async with self.changed:
            self.revision += 1
            self.committed_at[self.revision] = time.time()
            meta["resourceVersion"] = str(self.revision)
            if old is None:
                self.objects[key] = copy.deepcopy(new)
            else:
                self.objects[key].history.append(copy.deepcopy(new))
            self.log.append(
                (
                    self.revision,
                    res,
                    {"type": "ADDED" if old is None else "MODIFIED", "object": copy.deepcopy(new)},
                )
            )
            self.changed.notify_all()
        return new

    def _body(self, request: kmock.Request) -> Any:
        try:
            return json.loads(request.body or b"null")
        except ValueError as e:
            raise _error(400, "BadRequest", f"the request body is not JSON: {e}") from e

    async def write(
        self, res: str | resource, namespace: str | None, name: str, mutate: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Another writer (a GitOps sync, a person): read, ``mutate``, store with a new resourceVersion."""
        r = resource(res) if isinstance(res, str) else res
        kind, key = self.kinds[r], (r, namespace, name)
        async with self.write_lock:
            old = self._current(key, kind)
            if old is None:
                raise self._not_found(key)
            new = copy.deepcopy(old)
            mutate(new)
            return await self._commit(key, kind, new, old)

    def _news_since(self, cursor: int) -> bool:
        return self.revision > cursor or self.stopping

    async def stop_watches(self) -> None:
        async with self.changed:
            self.stopping = True
            self.changed.notify_all()


class KubeStandIn:
    """The API stand-in on 127.0.0.1:<free port>, its event loop in a thread of its own."""

    def __init__(
        self,
        crds: Sequence[Mapping[str, Any]] = (),
        workdir: pathlib.Path | None = None,
        keep_requests: bool = True,
    ) -> None:
        """``keep_requests=False``: kmock forgets each request once served (see `KubeApi.keep_requests`)."""
        self._crds = list(crds)
        self._keep_requests = keep_requests
        self._own_workdir = workdir is None
        self._workdir = workdir or pathlib.Path(tempfile.mkdtemp(prefix="kube-standin-"))
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._closing = threading.Event()
        self.handler: KubeApi | None = None
        self.url = ""
        self.kubeconfig_path = self._workdir / "kubeconfig"

    def __enter__(self) -> KubeStandIn:
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="kube-standin", daemon=True)
        self._thread.start()
        try:
            if not self._ready.wait(30) or self._failure is not None:
                raise RuntimeError(f"the Kubernetes API stand-in did not start: {self._failure!r}")
            self._write_kubeconfig()
        except BaseException:
            self.__exit__()  # no server thread outlives a failed start
            raise
        return self

    def _write_kubeconfig(self) -> None:
        self.kubeconfig_path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "standin",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {"cluster": "standin", "user": "standin", "namespace": "default"},
                        }
                    ],
                }
            )
        )

    def __exit__(self, *exc: object) -> None:
        self._closing.set()  # a server still starting stops as soon as it is up
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended (a failed start)
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(30)
        if self._own_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the starting thread
            self._failure = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with KubeApi() as handler, kmock.Server(handler) as server:
            self.handler = handler
            handler.keep_requests = self._keep_requests
            for crd in self._crds:
                handler.install_crd(crd)
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            if not self._closing.is_set():
                await self._stop.wait()
            await handler.stop_watches()

    def call(self, fn: Callable[[KubeApi], T]) -> T:
        """Run ``fn(handler)`` on the server's loop (kmock's DSL and objects are not thread-safe)."""
        assert self._loop is not None and self.handler is not None
        handler = self.handler

        async def run() -> T:
            return fn(handler)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def api_client(self) -> kubernetes.client.ApiClient:
        config = kubernetes.client.Configuration()
        config.host = self.url
        return json_api_client(config)  # the client mesh-canary's commands make

    def write(
        self, res: str, namespace: str | None, name: str, mutate: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """Change a stored object as another client would (see `KubeApi.write`)."""
        assert self._loop is not None and self.handler is not None
        future = asyncio.run_coroutine_threadsafe(
            self.handler.write(res, namespace, name, mutate), self._loop
        )
        return future.result(10)

    def install_crd(self, crd: Mapping[str, Any]) -> None:
        self.call(lambda h: h.install_crd(crd))

    def writers(self) -> list[tuple[int, str, str | None, str, str]]:
        """Every successful write so far: (resourceVersion, plural[/subresource], namespace, name, User-Agent)."""
        return self.call(lambda h: list(h.writers))

    def stored(self, res: str, namespace: str | None, name: str) -> list[dict[str, Any]]:
        """Every stored version of an object, oldest first (deletions left out)."""
        return self.call(
            lambda h: [dict(v.raw) for v in h.objects[res, namespace, name].history if v is not None]
        )
