"""ONE documented schema (mesh_canary/present/output.schema.json, docs/cli.md) for every
command that takes `-o json|yaml`: each is run for real here (click's runner, over real
policy files, a real local run's state and the API stand-in with the controller running)
and its JSON and YAML documents are validated. A command with `-o` that this test does not
run fails it."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from mesh_canary.cli import main
from tests.integration.test_controller import NS, Cluster, phase_is, running
from tests.integration.test_rollout_cli import cli, policy_file
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn
from tests.output_schema import check_output
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

ROOT = pathlib.Path(__file__).parents[2]
SLOW = {"steps": [20, 50, 100], "minStepDuration": "60s", "maxStepDuration": "120s"}
# `demo -o json` takes a minute: its document is checked in tests/e2e/test_demo.py.
ELSEWHERE = {
    "demo": ROOT / "tests" / "e2e" / "test_demo.py",
    # needs a running collector: tests/test_collector.py starts one.
    "collector import-labels": ROOT / "tests" / "test_collector.py",
    # needs a PagerDuty receiver: tests/integration/test_pagerduty_controller.py runs one.
    "rollout ack": ROOT / "tests" / "integration" / "test_pagerduty_controller.py",
    # needs a rollout on its fallback: its order document is checked there.
    "rollout restore-stable": ROOT / "tests" / "integration" / "test_fallback_controller.py",
}
# The schema kind each command's document is checked as.
KIND_ELSEWHERE = {
    "demo": "demo",
    "collector import-labels": "labelImport",
    "rollout ack": "acknowledgement",
    "rollout restore-stable": "order",
}


def _commands(cmd: click.Command = main, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), cmd


def with_o() -> set[str]:
    """The commands with `-o json` (a format; `report -o` is the page's)."""
    out = set()
    for name, cmd in _commands():
        for p in cmd.params:
            if (
                "-o" in getattr(p, "opts", ())
                and isinstance(p.type, click.Choice)
                and "json" in p.type.choices
            ):
                out.add(name)
    return out


def check(
    checked: set[str], command: str, kind: str, result: Any, fmt: str, lines: bool = False
) -> list[Any]:
    """Every document ``result`` printed, validated as ``kind``; the command marked checked."""
    assert result.exit_code in (0, 3), f"{command}: {result.output}"
    text = result.stdout
    if fmt == "yaml":
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    elif lines:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        docs = [json.loads(text)]
    assert docs, f"{command} -o {fmt} printed nothing"
    for doc in docs:
        check_output(doc, kind)
    checked.add(command)
    return docs


def both(checked: set[str], command: str, kind: str, run: Any) -> Any:
    """``run(fmt)`` for json and yaml; the JSON documents."""
    docs = check(checked, command, kind, run("json"), "json")
    check(checked, command, kind, run("yaml"), "yaml")
    return docs[0]


@pytest.fixture
def cluster(kube_api: KubeStandIn) -> Cluster:
    c = Cluster(kube_api)
    c.add_vs()
    return c


def local(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_every_documented_output_validates(cluster: Cluster, tmp_path: pathlib.Path) -> None:
    checked: set[str] = set()
    policy = str(ROOT / "policies" / "fraud-scorer-canary.yaml")
    minimal = str(ROOT / "policies" / "minimal.yaml")
    both(checked, "validate", "validation", lambda f: local("validate", policy, "-o", f))
    both(checked, "plan", "plan", lambda f: local("plan", "-f", policy, "--rps", "20", "-o", f))
    scenario = str(ROOT / "scenarios" / "aa.yaml")
    both(
        checked,
        "simulate",
        "simulation",
        lambda f: local("simulate", "-f", minimal, "--scenario", scenario, "-o", f),
    )

    # `run` for real on the local mesh (Envoy, two model servers): a degraded candidate.
    state = tmp_path / "st.json"
    demo = str(ROOT / "policies" / "local-demo.yaml")
    degraded = ["--backend", "local", "--metrics", "direct", "--candidate", "degraded", "--state", str(state)]
    ran = subprocess.run(
        [
            str(pathlib.Path(sys.executable).parent / "mesh-canary"),
            "run",
            "-f",
            demo,
            *degraded,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert ran.returncode == 3, ran.stderr
    check_output(json.loads(ran.stdout), "rollout")
    check(
        checked,
        "run",
        "rollout",
        local("run", "-f", demo, "--backend", "local", "--state", str(state), "-o", "yaml"),
        "yaml",
    )
    both(
        checked,
        "rollout get",
        "modelRollout",
        lambda f: local("rollout", "get", "--state", str(state), "-f", demo, "-o", f),
    )
    check(
        checked,
        "rollout retry",
        "order",
        local("rollout", "retry", "--state", str(state), "-o", "json"),
        "json",
    )
    both(
        checked,
        "rollout next",
        "modelRollout",
        lambda f: local("rollout", "next", "-f", demo, "--candidate", "v3", "-o", f),
    )

    # The cluster: every verb against the stand-in, the controller running.
    path = policy_file(tmp_path, "2.0", canary=SLOW)
    check(
        checked,
        "rollout start",
        "rollout",
        cli(cluster, "rollout", "start", "-f", path, "-o", "json"),
        "json",
    )
    with running(cluster.controller()):
        wait_for("an analysis", lambda: cluster.status().get("checks"))
        both(
            checked,
            "rollout status",
            "rollout",
            lambda f: cli(cluster, "rollout", "status", "fraud-scorer", "-n", NS, "-o", f),
        )
        both(
            checked,
            "rollout get",
            "modelRollout",
            lambda f: cli(cluster, "rollout", "get", "fraud-scorer", "-n", NS, "-o", f),
        )
        both(
            checked,
            "rollout list",
            "modelRolloutList",
            lambda f: cli(cluster, "rollout", "list", "-n", NS, "-o", f),
        )
        for verb, fmt in (("pause", "json"), ("resume", "yaml"), ("approve", "json")):
            check(
                checked,
                f"rollout {verb}",
                "order",
                cli(cluster, "rollout", verb, "fraud-scorer", "-n", NS, "-o", fmt),
                fmt,
            )
        promoted = cli(cluster, "rollout", "promote", "fraud-scorer", "--full", "-n", NS, "-o", "yaml")
        check(checked, "rollout promote", "order", promoted, "yaml")
        wait_for("the promotion", phase_is(cluster, "Succeeded"))
        nxt = cli(cluster, "rollout", "next", "fraud-scorer", "--candidate", "3.0", "-n", NS, "-o", "json")
        check(checked, "rollout next", "modelRollout", nxt, "json")
        wait_for("the next rollout", lambda: cluster.status().get("candidateVersion") == "3.0")
        wait_for("its first step", phase_is(cluster, "Progressing"))
        check(
            checked,
            "rollout abort",
            "order",
            cli(cluster, "rollout", "abort", "fraud-scorer", "-n", NS, "-o", "json"),
            "json",
        )
        retried = cli(cluster, "rollout", "retry", "fraud-scorer", "-n", NS, "-o", "yaml")
        check(checked, "rollout retry", "order", retried, "yaml")
        both(
            checked,
            "rollout history",
            "history",
            lambda f: cli(cluster, "rollout", "history", "fraud-scorer", "-n", NS, "-o", f),
        )
    # Last: no command with `-o json` is left out of this test.
    for command, where in ELSEWHERE.items():
        text = where.read_text()
        assert f'check_output(report, "{KIND_ELSEWHERE[command]}")' in text and command.split()[-1] in text, (
            where
        )
    missing = with_o() - checked - set(ELSEWHERE)
    assert not missing, (
        f"commands with -o json whose output no test checks against the schema: {sorted(missing)}"
    )
