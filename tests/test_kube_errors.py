"""kube/errors.py: the one place the client's errors become KubeError, and one line for people."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from mesh_canary.kube import rollouts
from mesh_canary.kube.errors import KubeError, describe_error, kube_call, kube_error, raise_api_error

SECRET_BODY = "<html>token=SECRET-77</html>"


def api_exception(status: int, reason: str = "Reason", body: object = None) -> ApiException:
    e = ApiException(status=status, reason=reason)
    e.body = body if isinstance(body, str) or body is None else json.dumps(body)
    return e


@pytest.mark.parametrize(
    ("status", "text", "transient", "bad_input"),
    [
        (404, "x: not found (nope)", False, False),
        (422, "x: the API server rejected it: nope", False, True),
        (409, "x: HTTP 409: nope", True, False),
        (429, "x: HTTP 429: nope", True, False),
        (503, "x: HTTP 503: nope", True, False),
        (403, "x: HTTP 403: nope", False, False),
    ],
)
def test_an_api_error_maps_to_one_kube_error_with_its_status(
    status: int, text: str, transient: bool, bad_input: bool
) -> None:
    e = kube_error(api_exception(status, body={"kind": "Status", "message": "nope"}), "x")
    assert isinstance(e, KubeError)
    assert (str(e), e.status, e.transient, e.bad_input) == (text, status, transient, bad_input)
    assert e.not_found is (status == 404) and e.conflict is (status == 409)


def test_a_response_body_that_is_not_a_status_never_reaches_the_message() -> None:
    e = kube_error(api_exception(500, "Internal Server Error", SECRET_BODY), "writing x")
    assert (
        str(e) == "writing x: HTTP 500: Internal Server Error"
        and e.detail == "HTTP 500: Internal Server Error"
    )


@pytest.mark.parametrize(
    "cause", [ConnectionRefusedError("refused"), urllib3.exceptions.ProtocolError("connection aborted")]
)
def test_no_answer_is_a_transient_kube_error_without_a_status(cause: Exception) -> None:
    e = kube_error(cause, "reading x")
    assert e.status is None and e.transient
    assert str(e).startswith("reading x: cannot reach the Kubernetes API: ")


def test_kube_call_maps_transport_errors_and_lets_bugs_through() -> None:
    with pytest.raises(KubeError) as caught, kube_call("reading x"):
        raise api_exception(410, "Gone")
    assert caught.value.status == 410 and isinstance(caught.value.__cause__, ApiException)
    with pytest.raises(ZeroDivisionError), kube_call("reading x"):
        _ = 1 / 0
    already = KubeError("mine", status=404)
    with pytest.raises(KubeError) as same, kube_call("reading x"):
        raise already
    assert same.value is already


def test_raise_api_error_says_what_failed() -> None:
    with pytest.raises(KubeError, match=r"^modelrollout ns/a: not found"):
        raise_api_error(api_exception(404, body={"message": "gone"}), "modelrollout ns/a")


def test_describe_error_never_shows_a_response_body() -> None:
    assert describe_error(api_exception(500, "Internal", SECRET_BODY)) == (
        "the Kubernetes API answered HTTP 500 (Internal)"
    )
    try:
        try:
            raise api_exception(500, "Internal", SECRET_BODY)
        except ApiException as inner:
            raise RuntimeError(f"the write failed: {inner.body}") from inner
    except RuntimeError as outer:
        line = describe_error(outer)
    assert "SECRET-77" not in line and "(response body not shown)" in line


def test_the_rollout_client_and_the_cli_share_the_one_type() -> None:
    assert rollouts.KubeError is KubeError
