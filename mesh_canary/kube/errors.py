"""The one error type for Kubernetes API failures, and the one place that maps the client's.

The official client raises `ApiException` (the server answered with an error) and urllib3
or socket errors (it could not be reached, or the answer never came). Every kube module and
the controller turn those into `KubeError` through `kube_error` (or the `kube_call` block),
so the rest of the code knows one type: its ``status`` (None: no answer), whether retrying
can help (``transient``) and whether the server refused what we sent (``bad_input``). A
`KubeError`'s text never carries a response body beyond the API's own ``message`` field;
`describe_error` makes one line of any error for a status, an Event or a notification.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, NoReturn

from mesh_canary.errors import BadInput, CouldNotWork
from mesh_canary.redact import redact

if TYPE_CHECKING:
    from kubernetes.client.exceptions import ApiException

# Statuses worth another try: no answer (0), a conflict, throttling, the server's own trouble.
TRANSIENT_STATUSES = frozenset({0, 409, 429})


class KubeError(CouldNotWork):
    """The Kubernetes API could not be reached, or refused.

    ``status``: the HTTP status (None when nothing answered); ``bad_input``: the server
    rejected what we sent (422); ``transient``: the same call may work if tried again.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        bad_input: bool = False,
        transient: bool = False,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.detail = detail or message  # what went wrong, without what was being done
        self.status = status
        self.reason = reason
        self.bad_input = bad_input
        self.transient = transient

    @property
    def code(self) -> int:
        """Exit 2 when the API rejected what we sent (the user's input), else 1."""
        return BadInput.exit_code if self.bad_input else self.exit_code

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def _api_exception() -> type[ApiException]:
    # Imported when needed: the client's package is slow to import, and the CLI starts fast.
    from kubernetes.client.exceptions import ApiException

    return ApiException


def is_transport_error(e: BaseException) -> bool:
    """A failure of the call itself (what `kube_error` maps), not a bug of ours."""
    if isinstance(e, (KubeError, OSError)) or type(e).__module__.startswith("urllib3"):
        return True
    return isinstance(e, _api_exception())


def _api_message(e: ApiException) -> str:
    """The API's own ``message`` field of a Status body, else the HTTP reason (never the raw body)."""
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or e.reason or "")


def kube_error(e: BaseException, what: str) -> KubeError:
    """``e`` (a client, urllib3 or socket error) as a KubeError saying ``what`` failed."""
    if isinstance(e, KubeError):
        return e
    if isinstance(e, _api_exception()):
        status = int(e.status or 0)
        message = _api_message(e)
        if status == 404:
            detail = f"not found ({message})"
        elif status == 422:
            detail = f"the API server rejected it: {message}"
        else:
            detail = f"HTTP {status}: {message}"
        return KubeError(
            f"{what}: {detail}",
            detail=detail,
            status=status,
            reason=str(e.reason or ""),
            bad_input=status == 422,
            transient=status in TRANSIENT_STATUSES or status >= 500,
        )
    reason = getattr(e, "reason", None)  # urllib3's MaxRetryError: the failure itself
    detail = f"cannot reach the Kubernetes API: {reason if isinstance(reason, Exception) else e}"
    return KubeError(f"{what}: {detail}", detail=detail, transient=True)


def raise_api_error(e: BaseException, what: str) -> NoReturn:
    """Raise ``e`` as a KubeError (from ``e``): whatever the client raised, ``what`` failed."""
    raise kube_error(e, what) from e


@contextlib.contextmanager
def kube_call(what: str) -> Iterator[None]:
    """``with kube_call("reading x"):`` one API call; its failure comes out as a KubeError."""
    try:
        yield
    except Exception as e:
        if not is_transport_error(e) or isinstance(e, KubeError):
            raise
        raise kube_error(e, what) from e


def describe_error(e: BaseException) -> str:
    """One line for a status, an Event or a notification: never an HTTP response body."""
    api_exception = _api_exception()
    if isinstance(e, api_exception):
        # str(ApiException) carries the response headers and body.
        return f"the Kubernetes API answered HTTP {e.status} ({e.reason})"
    text = str(e)
    seen: set[int] = set()
    cause = e.__cause__ or e.__context__
    while cause is not None and id(cause) not in seen:
        # Our own errors may quote an API error's body (a proxy's HTML page, a webhook's text).
        seen.add(id(cause))
        body = cause.body if isinstance(cause, api_exception) else None
        if body:
            shown = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
            if shown.strip():
                text = text.replace(shown.strip(), "(response body not shown)")
        cause = cause.__cause__ or cause.__context__
    line = redact(text.strip().splitlines()[0] if text.strip() else type(e).__name__)
    return line if len(line) <= 300 else line[:297] + "..."
