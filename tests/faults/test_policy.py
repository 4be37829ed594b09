"""Bad input and damaged files (issue 8, items 8 and 13): exit 2, one sentence naming the file
and the problem, nothing changed.

The real `mesh-canary` as a subprocess; `run` is pointed at the Kubernetes API stand-in
holding the VirtualService, whose stored versions prove that nothing was written. The
controller part runs the real controller against the stand-in.
"""

from __future__ import annotations

import copy
import json
import pathlib
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
import yaml

from mesh_canary.kube.status import condition
from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
from tests.e2e.test_cluster_e2e import MESH_CANARY, NS, model_rollout, virtual_service
from tests.integration.test_controller import HOLD, Cluster, running, wait_reconciles
from tests.integration.test_controller import model_rollout as controller_rollout
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.waiting import wait_for

VS_KEY = "networking.istio.io/v1/virtualservices"
BASE = model_rollout("scorer-c", "c-v1", "c-v2", "http://127.0.0.1:9")


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeStandIn]:
    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    with KubeStandIn(crds, workdir=tmp_path_factory.mktemp("kube")) as api:
        custom: Any = kubernetes.client.CustomObjectsApi(api.api_client())
        custom.create_namespaced_custom_object(
            "networking.istio.io", "v1", NS, "virtualservices", virtual_service("scorer-c", "c-v1", "c-v2")
        )
        yield api


def mesh_canary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESH_CANARY, *args], capture_output=True, text=True, timeout=120)


def spec_with(**changes: Any) -> dict[str, Any]:
    """BASE with dotted paths under spec set, e.g. {"analysis.interval": "1s"}."""
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    return doc


def check(metric: str, **fields: Any) -> list[dict[str, Any]]:
    return [{"metric": metric, **fields}]


NAN, INF = float("nan"), float("inf")
# (id, document, the field the sentence must name)
FAIL_OPEN = [
    ("max-nan", spec_with(**{"analysis.checks": check("errorRate", max=NAN)}), "checks[0].max"),
    ("maxIncrease-nan", spec_with(**{"analysis.checks": check("errorRate", maxIncrease=NAN)}), "maxIncrease"),
    ("maxIncreaseRatio-inf", spec_with(**{"analysis.checks": check("errorRate", maxIncreaseRatio=INF)}), "maxIncreaseRatio"),
    ("maxDecrease-nan", spec_with(**{"analysis.checks": check("accuracy", maxDecrease=NAN)}), "maxDecrease"),
    ("quantile-nan", spec_with(**{"analysis.checks": check("latency", quantile=NAN, max=100)}), "quantile"),
    ("slowerThan-nan", spec_with(**{"analysis.checks": check("latency", slowerThan=NAN, max=0.1)}), "slowerThan"),
    ("confidence-nan", spec_with(**{"analysis.confidence": NAN}), "analysis.confidence"),
    ("maxPSI-nan", spec_with(**{"analysis.checks": check("predictionDrift", maxPSI=NAN)}), "maxPSI"),
    ("maxDeviation-inf", spec_with(**{"analysis.checks": check("trafficShare", maxDeviation=INF)}), "maxDeviation"),
    ("custom-max-nan", spec_with(**{"analysis.checks": check("custom", name="kpi", query="sum(up)", max=NAN)}), "checks[0].max"),
    ("custom-min-neg-inf", spec_with(**{"analysis.checks": check("custom", name="kpi", query="sum(up)", min=-INF)}), "checks[0].min"),
    ("interval-110000d", spec_with(**{"analysis.interval": "110000d", "analysis.noDataTimeout": "110000d", "canary.maxStepDuration": "110000d"}), "analysis.interval"),
    ("steps-100", spec_with(**{"canary.steps": [100]}), "steps[0]"),
    ("steps-repeated", spec_with(**{"canary.steps": [10, 20, 20, 50, 100]}), "steps[2]"),
]  # fmt: skip


@pytest.mark.fault(item=8)
def test_validate_refuses_every_fail_open_number_and_schedule(tmp_path: pathlib.Path) -> None:
    """NaN switched a check off (every comparison with it is false), Inf made it unjudgeable,
    `steps: [100]` sent everything to an unjudged candidate: all passed `validate`."""
    files = []
    for name, doc, _ in FAIL_OPEN:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))  # NaN/Inf as YAML's .nan/.inf
        files.append(path)
    proc = mesh_canary("validate", "-o", "json", *map(str, files))
    assert proc.returncode == 2, proc.stderr
    results = json.loads(proc.stdout)
    for (name, _, field), result in zip(FAIL_OPEN, results, strict=True):
        assert result["valid"] is False, name
        assert any(field in p["path"] for p in result["problems"]), (name, result["problems"])
    proc = mesh_canary("validate", str(tmp_path / "steps-repeated.yaml"))
    assert "spec.canary.steps[2]: 20 is repeated" in proc.stderr
    proc = mesh_canary("validate", str(tmp_path / "steps-100.yaml"))
    assert "a canary needs at least one step below 100" in proc.stderr


def _big_int_policy() -> bytes:
    text = yaml.safe_dump(BASE)
    return text.replace("minRequests: 20", "minRequests: " + "9" * 5000).encode()


def _policy_bytes(doc: dict[str, Any]) -> bytes:
    return yaml.safe_dump(doc).encode()


MINIMAL = yaml.safe_dump(BASE)
# (id, file bytes, words the one sentence must contain)
BAD_FILES = [
    ("utf-16", MINIMAL.encode("utf-16"), "UTF-16"),
    ("utf-16-no-bom", MINIMAL.encode("utf-16-le"), "UTF-16"),
    ("latin-1", (MINIMAL + "# café\n").encode("latin-1"), "not valid UTF-8"),
    ("binary", bytes(range(256)) * 64, "binary"),
    ("5000-digit-int", _big_int_policy(), "more than 4300 digits"),
    ("metric-list", _policy_bytes(spec_with(**{"analysis.checks": [{"metric": [], "max": 1}]})), "checks[0].metric"),
    ("metric-map", _policy_bytes(spec_with(**{"analysis.checks": [{"metric": {}, "max": 1}]})), "checks[0].metric"),
    ("routes-nested", _policy_bytes(spec_with(**{"virtualService.routes": [["a"]]})), "routes[0]"),
    ("huge", (MINIMAL + "#" + "x" * (2 << 20) + "\n").encode(), "larger than 1 MiB"),
    ("query-unterminated", _policy_bytes(spec_with(**{"analysis.checks": check("custom", name="kpi", query='sum(up{job="x})', max=1)})), "unterminated string"),
    ("query-backtick", _policy_bytes(spec_with(**{"analysis.checks": check("custom", name="kpi", query="sum(up{job=`{{ version }}`})", max=1)})), "raw `...` string"),
]  # fmt: skip


def assert_one_clear_sentence(proc: subprocess.CompletedProcess[str], path: str, words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "--debug" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert path in lines[0] and words in lines[0], lines[0]


@pytest.mark.fault(item=13)
@pytest.mark.parametrize(("content", "words"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_a_bad_policy_file_is_one_sentence_exit_2_and_nothing_changed(
    kube: KubeStandIn, tmp_path: pathlib.Path, content: bytes, words: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    assert_one_clear_sentence(mesh_canary("validate", str(path)), str(path), words)
    before = len(kube.stored(VS_KEY, NS, "scorer-c"))
    state = tmp_path / "state.json"
    started = time.monotonic()
    proc = mesh_canary(
        "run", "-f", str(path), "--backend", "istio", "--kubeconfig", str(kube.kubeconfig_path),
        "--prometheus", "http://127.0.0.1:9", "--state", str(state),
    )  # fmt: skip
    assert_one_clear_sentence(proc, str(path), words)
    assert time.monotonic() - started < 60, "bounded, not forever"
    assert len(kube.stored(VS_KEY, NS, "scorer-c")) == before and not state.exists()


@pytest.mark.fault(item=13)
def test_dev_zero_as_a_policy_is_refused_at_the_size_cap() -> None:
    proc = mesh_canary("validate", "/dev/zero")
    assert_one_clear_sentence(proc, "/dev/zero", "larger than 1 MiB")


def _state(tmp_path: pathlib.Path, policy: pathlib.Path, kube: KubeStandIn) -> dict[str, Any]:
    """A real saved state: a run of the policy stopped by its --timeout at the first step."""
    state = tmp_path / "good-state.json"
    proc = mesh_canary(
        "run", "-f", str(policy), "--backend", "istio", "--kubeconfig", str(kube.kubeconfig_path),
        "--prometheus", "http://127.0.0.1:9", "--state", str(state), "--timeout", "1s",
    )  # fmt: skip
    assert state.exists(), proc.stderr
    return dict(json.loads(state.read_text()))


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.fault(item=13)
def test_a_damaged_state_file_names_the_file_and_the_field(kube: KubeStandIn, tmp_path: pathlib.Path) -> None:
    """`'stepIndex'` and "tuple index out of range" were the whole message."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(MINIMAL)
    good = _state(tmp_path, policy, kube)
    damaged: list[tuple[str, str | bytes, str]] = [
        ("missing-stepIndex", json.dumps(_without(good, "stepIndex")), "the field 'stepIndex' is missing"),
        ("stepIndex-string", json.dumps({**good, "stepIndex": "one"}), "'stepIndex' must be a whole number"),
        ("stepIndex-out-of-range", json.dumps({**good, "stepIndex": 7}), "'stepIndex' is 7, but the policy has 3 steps"),
        ("weights-list", json.dumps({**good, "weights": [1, 2]}), "'weights' must be an object"),
        ("weights-missing-key", json.dumps({**good, "weights": {"stable": 100}}), "weights: the field 'candidate' is missing"),
        ("phase-unknown", json.dumps({**good, "phase": "Exploded"}), "'phase' holds 'Exploded'"),
        ("steps-damaged", json.dumps({**good, "steps": [{"weight": 5}]}), "steps[0]: the field 'startS' is missing"),
        ("startedAt-nan", json.dumps({**good, "startedAt": float("nan")}), "'startedAt' must be a finite number"),
        ("not-json", "{'stepIndex': 1", "is not valid JSON"),
        ("a-list", "[1, 2]", "does not hold a JSON object"),
        ("binary", bytes(range(256)), "is not UTF-8"),
    ]  # fmt: skip
    for name, content, words in damaged:
        state = tmp_path / f"{name}.json"
        if isinstance(content, bytes):
            state.write_bytes(content)
        else:
            state.write_text(content)
        before = len(kube.stored(VS_KEY, NS, "scorer-c"))
        proc = mesh_canary(
            "run", "-f", str(policy), "--backend", "istio", "--kubeconfig", str(kube.kubeconfig_path),
            "--prometheus", "http://127.0.0.1:9", "--state", str(state),
        )  # fmt: skip
        assert_one_clear_sentence(proc, str(state), words)
        assert len(kube.stored(VS_KEY, NS, "scorer-c")) == before, name


@pytest.mark.fault(item=13)
def test_the_controller_refuses_a_query_that_cannot_be_built_once(kube_api: KubeStandIn) -> None:
    """It used to load such a spec, fail at every read, and post Restarted every 5 s."""
    cluster = Cluster(kube_api)
    cluster.add_vs()
    bad = [{"metric": "custom", "name": "kpi", "query": 'sum(up{job="x})', "max": 1}]
    cluster.add_rollout(controller_rollout(analysis={"interval": "1s", "checks": bad}))
    cluster.add_vs("sentinel")  # a valid rollout that keeps the controller turning
    cluster.add_rollout(
        controller_rollout("sentinel", candidate="9.0", analysis={"interval": "1s"}, canary=HOLD)
    )
    with running(cluster.controller()) as ctl:
        valid = wait_for("the PolicyValid condition", lambda: condition(cluster.status(), "PolicyValid"))
        wait_reconciles(ctl, 6)  # several of the controller's turns: still nothing may happen
    assert valid["status"] == "False" and "unterminated string" in valid["message"]
    assert "spec.analysis.checks[0].query" in valid["message"]
    assert [w for name, w in cluster.writes if name == "fraud-scorer"] == []
    assert cluster.vs_history() == [[100, 0]]
    assert [e[0] for e in cluster.events()] == ["InvalidPolicy"]
