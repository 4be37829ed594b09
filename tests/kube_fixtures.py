"""Pytest fixtures for the Kubernetes API stand-in (import them in conftest.py).

``kube_api``: a fresh stand-in per test, holding Istio's VirtualService and
DestinationRule CRDs, the Gateway API's HTTPRoute CRD and the project's ModelRollout CRD. It has ``.url``,
``.kubeconfig_path``, ``.api_client()``, ``.call(fn)`` (runs ``fn(handler)`` on the
server's loop: kmock's DSL for fault injection, ``handler.objects``), ``.write(...)``
(change an object as another client would) and ``.stored(...)`` (every stored version).

``kubectl(api, *args)`` runs the machine's kubectl against a stand-in.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.crd_schema import HTTPROUTE_CRD, ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.kube_standin import KubeStandIn


@pytest.fixture
def kube_api(tmp_path: pathlib.Path) -> Iterator[KubeStandIn]:
    crds = [load_yaml(path) for path in [*ISTIO_CRDS, HTTPROUTE_CRD, MODELROLLOUT_CRD]]
    with KubeStandIn(crds, workdir=tmp_path) as api:
        yield api


def kubectl(api: KubeStandIn, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """``kubectl ARGS`` against ``api`` (its own cache dir); fails the test when kubectl is missing."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail(
            "kubectl is not installed: see https://kubernetes.io/docs/tasks/tools/ "
            "(Debian: the kubernetes apt repository's kubectl package)"
        )
    cache = api.kubeconfig_path.parent / "kubectl-cache"
    result = subprocess.run(
        [binary, f"--kubeconfig={api.kubeconfig_path}", f"--cache-dir={cache}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed: {result.stderr.strip()}"
    return result
