"""MetricsSource that asks a Prometheus server (Istio's, or one scraping Envoy/the local mesh).

One read sends the instant queries ``promql.plan_queries`` builds for the policy's checks
(one per metric family, each answering for both versions), all evaluated at the same
``time=now`` over the window ``now - since``, and turns the answers into an Observation.

It never raises from ``read``: Prometheus down, slow, an error answer, a version without
series or a NaN each become a distinct sentence in ``Observation.problem``, which the
engine treats as no data (never as a pass).

Queries go through ``prometheus-api-client``'s ``PrometheusConnect.custom_query``, over a
``requests.Session`` whose only transport is ``deadline_requests.DeadlineAdapter`` (a
``requests`` transport adapter that sends through ``deadline_http.DeadlineClient``), so the
library's usual retrying urllib3 transport never sends anything.

Deadlines: one read, all its queries together, ends within
``min(metrics.timeout, max(analysis.interval, 5s))`` of its start, however the server answers (a
server that trickles its answer a byte a second included): each query gets the time left
as its requests ``timeout``, which the adapter turns into a TOTAL deadline (every socket step
gets only the time left). No retries, redirects not followed: the engine asks again next tick.

Shared queries (the controller): with a ``coalescer`` (`mesh_canary.metrics.coalesce`), a read
whose ``now`` is on the grid of the analysis interval starts its window at the first grid
instant at or after ``since`` (never earlier: no data from before the step), and each
built-in family's query is shared with every other rollout expected at that instant over the
same window (one query for all, split per rollout: the same Observation as its own query).
Custom checks, and a policy whose stable and candidate are on two hosts, send their own.

Disclosure: nothing the server sent is copied into a problem (which reaches the status,
Events, notifications and the state file): only the HTTP status, Prometheus's own short
``errorType`` (a fixed enum) and fixed sentences; prometheus-api-client's own exception
(which quotes the body) is never shown. URLs are shown through ``redact_url``.
"""

from __future__ import annotations

import http
import json
import logging
import threading
import time
import urllib.parse
from typing import Any

import requests
import requests.adapters
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.policy import PolicyError, Problem
from mesh_canary.metrics import promql
from mesh_canary.metrics.coalesce import QueryCoalescer, grid_ceil, on_grid
from mesh_canary.metrics.deadline_http import DeadlineClient, SharedClients, origin
from mesh_canary.metrics.deadline_requests import (
    AnswerTooLarge,
    CannotConnect,
    DeadlineAdapter,
    NotHTTP,
    deadline_session,
)
from mesh_canary.redact import redact_url

__all__ = ["MetricsAddressError", "PrometheusMetricsSource", "check_address"]

log = logging.getLogger("mesh_canary.prometheus")

# Prometheus's API errorType values (a fixed enum, so safe to show); each with a fixed
# sentence. Any other errorType is not shown.
_ERROR_TYPES = {
    "bad_data": "it rejected the query",
    "execution": "the query failed while running",
    "timeout": "the query timed out inside Prometheus",
    "canceled": "the query was canceled",
    "internal": "it had an internal error",
    "unavailable": "it is not ready",
    "not_found": "it does not know that API path",
    "not_acceptable": "it does not accept the request",
}
MIN_READ_BUDGET_S = 5.0
# One client (keep-alive pool, TLS context made only for https) per Prometheus origin in the
# process, shared by every source reading it; each read keeps its own total deadline.
CLIENTS = SharedClients()
_RESULT_TYPES = frozenset({"vector", "matrix", "scalar", "string"})


class MetricsAddressError(PolicyError, ValueError):
    """The metrics address cannot be used (one sentence says why); bad input, nothing sent."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__([Problem(path, message)])


def check_address(url: str, path: str = "spec.metrics.address") -> str:
    """``url`` without a trailing ``/`` if it is a usable Prometheus address, else MetricsAddressError.

    Only http/https, a host, an optional port and path prefix, optional credentials; no
    query string or fragment (a ``?`` would swallow the API path appended after it).
    """
    shown = redact_url(str(url))
    if not isinstance(url, str) or not url:
        raise MetricsAddressError("the Prometheus address is empty", path)
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise MetricsAddressError(f"{shown!r} contains spaces or control characters", path)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise MetricsAddressError(f"{shown!r} must start with http:// or https://", path)
    if not parts.hostname:
        raise MetricsAddressError(f"{shown!r} names no host", path)
    try:
        parts.port  # noqa: B018 - raises ValueError on a port that is not 0-65535
    except ValueError:
        raise MetricsAddressError(f"{shown!r} has an invalid port", path) from None
    if "?" in url:
        raise MetricsAddressError(
            f"{shown!r} has a query string ('?...'): the API path would be appended after it; "
            "give the address without '?'",
            path,
        )
    if "#" in url:
        raise MetricsAddressError(f"{shown!r} has a fragment ('#...'); give the address without it", path)
    return url.rstrip("/")


class _Unanswered(Exception):
    """A query got no usable answer; the message is the problem to report.

    ``unreachable``: Prometheus is down or slow, so the rest of this read is not sent.
    """

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class PrometheusMetricsSource:
    """Per-version counts over ``[since, now]`` from Prometheus, for the policy's checks.

    ``url`` and ``timeout_s`` default to ``policy.metrics.address``/``timeout``; one read
    (all its queries) is bounded by ``min(timeout_s, max(policy.analysis.interval, 5s))``.
    ``client`` is the DeadlineClient to send with (TLS settings, extra headers such as a
    bearer token; the caller closes it); by default the process's shared client for the
    address's origin (``CLIENTS``), given back by ``close``. ``transport`` replaces the whole transport (a
    ``requests.adapters.BaseAdapter``, e.g. a fake in a test); it must honour requests'
    ``timeout`` as a total deadline, as the default ``DeadlineAdapter(client)`` does. Raises
    MetricsAddressError for an unusable address and PromQLError when the policy cannot be
    turned into safe queries.
    """

    def __init__(
        self,
        policy: Policy,
        url: str | None = None,
        timeout_s: float | None = None,
        client: DeadlineClient | None = None,
        transport: requests.adapters.BaseAdapter | None = None,
        coalescer: QueryCoalescer | None = None,
    ) -> None:
        if client is not None and transport is not None:
            raise ValueError("give client= (sent through a DeadlineAdapter) or transport=, not both")
        self.policy = policy
        self.url = check_address(
            policy.metrics.address if url is None else url,
            "spec.metrics.address" if url is None else "the Prometheus address",
        )
        self.shown_url = redact_url(self.url)
        self.timeout_s = float(policy.metrics.timeout_s if timeout_s is None else timeout_s)
        # One read never holds its tick much past the interval, so the engine's deadlines are
        # checked on time; the floor keeps a one-second interval from making a loaded
        # Prometheus look absent.
        self.read_budget_s = min(self.timeout_s, max(policy.analysis.interval_s, MIN_READ_BUDGET_S))
        self.queries_per_read = len(promql.plan_queries(policy, "60s"))  # also validates the policy
        self.last_read_queries = 0  # HTTP queries the last read actually sent
        self.coalescer = coalescer
        self._shared_key: str | None = None
        if client is None and transport is None:
            self._shared_key = origin(self.url)
            client = CLIENTS.acquire(self._shared_key)
        self._transport = transport if transport is not None else DeadlineAdapter(client, self.read_budget_s)
        self._answers = threading.local()  # each thread's last HTTP answer (see _keep)
        session = deadline_session(self._transport)
        session.hooks["response"].append(self._keep)
        # PrometheusConnect mounts its own retrying urllib3 adapter on the URL (asked not to
        # retry anyway); ours goes back over it, so nothing is sent without the deadline.
        self._prometheus = PrometheusConnect(
            self.url, session=session, retry=Retry(total=0, redirect=False, raise_on_status=False)
        )
        session.mount(self.url, self._transport)

    def queries(self, since: float, now: float) -> list[str]:
        """The PromQL one read over ``[since, now]`` sends (for logs, docs and debugging)."""
        return [q.promql for q in promql.plan_queries(self.policy, promql.format_window(since, now))]

    def close(self) -> None:
        if self.coalescer is not None:
            self.coalescer.forget(id(self))
        self._prometheus.close()  # closes the Session and its transport (not a shared client)
        key, self._shared_key = self._shared_key, None
        if key is not None:  # once, however often close is called
            CLIENTS.release(key)

    def window(self, since: float, now: float) -> float:
        """Where a read over ``[since, now]`` starts: with a coalescer and ``now`` on the grid of
        the analysis interval, at the first grid instant at or after ``since`` (if before ``now``),
        so that rollouts whose steps began within one interval share a window."""
        interval = self.policy.analysis.interval_s
        if self.coalescer is None or not on_grid(now, interval):
            return since
        start = grid_ceil(since, interval)
        return start if start < now else since

    def expect(self, since: float, now: float) -> None:
        """Tell the coalescer this source's next read (``read(since, now)``), so it is in the
        batch of that instant; nothing without a coalescer or off the grid."""
        if self.coalescer is None:
            return
        interval = self.policy.analysis.interval_s
        if not on_grid(now, interval):
            self.coalescer.forget(id(self))
            return
        try:
            plan = promql.plan_queries(self.policy, promql.format_window(self.window(since, now), now))
        except promql.PromQLError:
            return
        specs = [q.batch for q in plan if q.batch is not None]
        self.coalescer.expect(id(self), self.url, now, specs)

    def read(self, since: float, now: float) -> Observation:
        self.last_read_queries = 0
        deadline = time.monotonic() + self.read_budget_s
        since = self.window(since, now)
        try:
            window = promql.format_window(since, now)
            plan = promql.plan_queries(self.policy, window)
        except promql.PromQLError as err:  # validated at construction; kept for safety
            return Observation(since=since, at=now, problem=f"cannot build the metrics queries: {err}")
        reading = promql.Reading(
            self.policy.stable.metrics_version, self.policy.candidate.metrics_version, window
        )
        for query in plan:
            try:
                shared = self._shared(query, now, deadline)
                if shared is not None:
                    promql.interpret(reading, query, "vector", shared)
                    continue
                result_type, result = self._query(query.promql, now, deadline, query.family)
                promql.interpret(reading, query, result_type, result)
            except _Unanswered as err:
                reading.problems.append(f"{err} (query for {query.metric})")
                if err.unreachable:
                    break  # down or slow: asking again this tick only adds waiting
            except Exception as err:  # the contract is "never raise": report it as no data
                log.debug("reading %s failed", query.metric, exc_info=True)
                reading.problems.append(f"unexpected error reading {query.metric}: {type(err).__name__}")
        stable, candidate = reading.version_counts()
        problem = "; ".join(reading.problems) if reading.problems else None
        return Observation(since=since, at=now, stable=stable, candidate=candidate, problem=problem)

    def _shared(self, query: promql.Query, at: float, deadline: float) -> list[dict[str, Any]] | None:
        """The query's answer from the batch shared at ``at``; None: send it alone."""
        if self.coalescer is None or query.batch is None:
            return None
        family = query.family
        return self.coalescer.take(
            id(self),
            self.url,
            at,
            query.batch,
            deadline,
            lambda text, until: self._query(text, at, until, family, batched=True),
        )

    # --- one HTTP query ---------------------------------------------------------------------

    def _query(
        self, text: str, at: float, deadline: float, family: str = "custom", batched: bool = False
    ) -> tuple[str, Any]:
        """(resultType, result) of an instant query at ``at``; _Unanswered with the reason."""
        slow = f"Prometheus did not answer within {self.read_budget_s:g}s ({self.shown_url})"
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Unanswered(slow, unreachable=True)
        self.last_read_queries += 1
        if self.coalescer is not None:
            self.coalescer.count(family, batched)
        self._answers.last = None
        try:
            # The time left is the request's total deadline (DeadlineAdapter): the read's
            # budget is shared by its queries. (Seconds as a float; typed int upstream.)
            self._prometheus.custom_query(text, params={"time": f"{at:.3f}"}, timeout=left)  # type: ignore[arg-type]
        except requests.Timeout:
            raise _Unanswered(slow, unreachable=True) from None
        except NotHTTP:
            raise _Unanswered(
                f"Prometheus did not answer in HTTP ({self.shown_url})", unreachable=True
            ) from None
        except requests.ConnectionError as err:
            # Only our adapter's reasons are fixed sentences; another transport's may quote anything.
            reason = str(err) if isinstance(err, CannotConnect) else "the connection failed"
            raise _Unanswered(
                f"Prometheus at {self.shown_url} is unreachable: {reason}", unreachable=True
            ) from None
        except AnswerTooLarge as err:
            raise _Unanswered(f"Prometheus's answer was too large: {err} ({self.shown_url})") from None
        except Exception:
            # PrometheusConnect raises on any status but 200 (quoting the body: never shown) and
            # on a 200 that is not its JSON API; the answer itself, kept by _keep, says which.
            pass
        answer: requests.Response | None = getattr(self._answers, "last", None)
        if answer is None:  # nothing came back at all
            raise _Unanswered(f"Prometheus did not answer in HTTP ({self.shown_url})", unreachable=True)
        return self._data(answer.status_code, answer.content)

    def _keep(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        """The Session's response hook: keep the answer (status and body) for ``_data``.

        ``custom_query`` gives back only ``data.result``; judging needs the status, the
        ``errorType`` and the ``resultType`` too.
        """
        self._answers.last = response
        return response

    def _data(self, status: int, content: bytes) -> tuple[str, Any]:
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
            if status != 200:
                raise _Unanswered(f"Prometheus answered {_status(status)} ({self.shown_url})")
            raise _Unanswered(f"Prometheus sent an answer that is not its JSON API ({self.shown_url})")
        if status != 200 or body.get("status") != "success":
            error_type = body.get("errorType")
            detail = f" ({error_type}: {_ERROR_TYPES[error_type]})" if error_type in _ERROR_TYPES else ""
            raise _Unanswered(f"Prometheus answered {_status(status)}{detail}")
        data = body.get("data")
        if not isinstance(data, dict) or data.get("resultType") not in _RESULT_TYPES or "result" not in data:
            raise _Unanswered(f"Prometheus sent an answer that is not its JSON API ({self.shown_url})")
        return str(data["resultType"]), data["result"]


def _status(code: int) -> str:
    """``HTTP 503 Service Unavailable``: the code and the standard phrase, never the server's own."""
    try:
        return f"HTTP {code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"
