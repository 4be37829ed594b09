"""MetricsSource that asks a Prometheus server (Istio's, or one scraping Envoy/the local mesh).

One read sends the instant queries ``promql.plan_queries`` builds for the policy's checks
(one per metric family, each answering for both versions), all evaluated at the same
``time=now`` over the window ``now - since``, and turns the answers into an Observation.

It never raises from ``read``: Prometheus down, slow, an error answer, a version without
series or a NaN each become a distinct sentence in ``Observation.problem``, which the
engine treats as no data (never as a pass).

Transport: ``prometheus_api_client.PrometheusConnect`` (a project dependency) over a
``requests.Session``. Two settings make it fit a control loop: retries are off (its default
retries 5xx with backoff, which would hold a rollback decision hostage to a sick server;
the engine asks again next tick anyway) and every request carries the timeout. The client
turns an error answer into an exception holding only the status, so a response hook keeps
the last response to report Prometheus's own ``errorType``/``error``.
"""

from __future__ import annotations

import threading
from typing import Any, cast

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from mesh_canary.adapters import promql
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation

__all__ = ["PrometheusMetricsSource"]


class _Unanswered(Exception):
    """A query got no usable answer; the message is the problem to report.

    ``unreachable``: Prometheus is down or slow, so the rest of this read is not sent.
    """

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class PrometheusMetricsSource:
    """Per-version counts over ``[since, now]`` from Prometheus, for the policy's checks.

    ``url`` and ``timeout_s`` default to ``policy.metrics.address``/``timeout``;
    ``transport`` is the ``requests.Session`` to send with (auth, TLS, proxies), a new one
    by default. Raises PromQLError at construction when the policy cannot be turned into
    safe queries.
    """

    def __init__(
        self,
        policy: Policy,
        url: str | None = None,
        timeout_s: float | None = None,
        transport: requests.Session | None = None,
    ) -> None:
        self.policy = policy
        self.url = (url or policy.metrics.address).rstrip("/")
        self.timeout_s = float(policy.metrics.timeout_s if timeout_s is None else timeout_s)
        self.queries_per_read = len(promql.plan_queries(policy, "60s"))  # also validates the policy
        self.last_read_queries = 0  # HTTP queries the last read actually sent
        self._last_response = threading.local()
        session = transport if transport is not None else requests.Session()
        session.hooks.setdefault("response", []).append(self._remember)
        self._client = PrometheusConnect(
            url=self.url,
            session=session,
            retry=Retry(total=0, read=False, redirect=False, raise_on_status=False),
            timeout=cast(int, self.timeout_s),  # annotated int; requests takes float seconds
        )

    def queries(self, since: float, now: float) -> list[str]:
        """The PromQL one read over ``[since, now]`` sends (for logs, docs and debugging)."""
        return [q.promql for q in promql.plan_queries(self.policy, promql.format_window(since, now))]

    def read(self, since: float, now: float) -> Observation:
        self.last_read_queries = 0
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
                result_type, result = self._query(query.promql, now)
                promql.interpret(reading, query, result_type, result)
            except _Unanswered as err:
                reading.problems.append(f"{err} (query for {query.metric})")
                if err.unreachable:
                    break  # down or slow: asking again this tick only adds waiting
            except Exception as err:  # the contract is "never raise": report it as no data
                reading.problems.append(
                    f"unexpected error reading {query.metric}: {type(err).__name__}: {err}"
                )
        stable, candidate = reading.version_counts()
        problem = "; ".join(reading.problems) if reading.problems else None
        return Observation(since=since, at=now, stable=stable, candidate=candidate, problem=problem)

    # --- one HTTP query ---------------------------------------------------------------------

    def _remember(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self._last_response.value = response

    def _query(self, text: str, at: float) -> tuple[str, Any]:
        """(resultType, result) of an instant query at ``at``; _Unanswered with the reason."""
        self._last_response.value = None
        self.last_read_queries += 1
        try:
            self._client.custom_query(text, params={"time": f"{at:.3f}"})
            response: requests.Response = self._last_response.value
            data = response.json()["data"]
            return str(data["resultType"]), data["result"]
        except requests.exceptions.Timeout:
            message = f"Prometheus did not answer within {self.timeout_s:g}s ({self.url})"
            raise _Unanswered(message, unreachable=True) from None
        except requests.exceptions.ConnectionError as err:
            message = f"Prometheus at {self.url} is unreachable: {_root_cause(err)}"
            raise _Unanswered(message, unreachable=True) from None
        except PrometheusApiClientException:
            raise _Unanswered(self._error_answer()) from None
        except (requests.exceptions.RequestException, ValueError, KeyError, TypeError, AttributeError):
            raise _Unanswered(f"Prometheus sent an answer that is not its JSON API ({self.url})") from None

    def _error_answer(self) -> str:
        response: requests.Response | None = getattr(self._last_response, "value", None)
        if response is None:
            return "Prometheus answered with an error"
        try:
            body = response.json()
            detail = f"{body.get('errorType', 'error')}: {body['error']}"
        except (ValueError, KeyError, TypeError, AttributeError):
            detail = response.text[:200].strip() or response.reason
        return f"Prometheus answered HTTP {response.status_code}: {detail}"


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a requests error, e.g. 'connection refused'."""
    seen = err
    while True:
        nxt = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        nxt = nxt or getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(nxt, BaseException) or nxt is seen:
            break
        seen = nxt
    if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
        return "connection refused"
    text = str(seen)
    return text.split(": ", 1)[-1][:160] if text else type(seen).__name__
