"""`mesh-canary report`: the HTML page of one rollout, from real engine states.

The states come from the real runner, engine and judge driving the synthetic mesh in
virtual time and saving through the same FileStateStore as `mesh-canary run --state`;
the ModelRollout ones from the controller's status renderer (and, in the last test,
through the API stand-in and the official client).
"""

from __future__ import annotations

import copy
import html
import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from click.testing import CliRunner

from mesh_canary.cli import main
from mesh_canary.core.engine import RolloutState
from mesh_canary.core.model import Policy
from mesh_canary.core.observations import Observation
from mesh_canary.core.policy import load_policy
from mesh_canary.kube.status import KubeStatusStore, render_status
from mesh_canary.notify import LogNotifier
from mesh_canary.present import numbers
from mesh_canary.present.report import ReportError, render_report, render_resource_report
from mesh_canary.run.clock import VirtualClock
from mesh_canary.run.runner import RolloutRunner
from mesh_canary.run.stores import FileStateStore
from mesh_canary.simulation.traffic import SyntheticMesh, load_scenario
from tests.conftest import model_rollout
from tests.kube_fixtures import kube_api as kube_api  # the fixture
from tests.kube_standin import KubeStandIn

T0 = 1_700_000_000.0  # the runner's clock starts at a wall-clock time, as in `mesh-canary run`
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'

# ---------------------------------------------------------------------------- real states


def policy_doc(steps: list[int] | None = None, labels: bool = True, **spec: Any) -> dict[str, Any]:
    """The shared document with the report's versions, minutes-long steps, and an accuracy check."""
    checks: list[dict[str, Any]] = [{"metric": "errorRate", "maxIncreaseRatio": 0.5, "max": 0.05}]
    if labels:
        checks.append({"metric": "accuracy", "maxDecrease": 0.05, "minLabeled": 100})
    return model_rollout(
        "fraud-scorer",
        "1.5.0",
        stable={"version": "1.4.2"},
        canary={"steps": steps or [10, 50, 100], "minStepDuration": "2m", "maxStepDuration": "20m"},
        analysis={"interval": "30s", "minRequests": 100, "noDataTimeout": "5m", "checks": checks},
        **spec,
    )


def scenario(candidate: dict[str, Any] | None = None, labels_missing: float = 0.2) -> Any:
    return load_scenario(
        {
            "duration": "2h",
            "traffic": {"rps": 50},
            "versions": {
                "stable": {
                    "errorRate": 0.005,
                    "latency": {"medianMs": 80, "p99Ms": 250},
                    "accuracy": 0.9,
                    "labels": {"delayMeanS": 20, "missing": labels_missing},
                    "predictions": [0.7, 0.2, 0.1],
                },
                "candidate": candidate or {},
            },
        },
        "test",
    )


class ShiftedMesh:
    """The synthetic mesh as the runner's router and metrics source, on a wall clock from T0."""

    def __init__(self, mesh: SyntheticMesh) -> None:
        self.mesh = mesh

    def set_weights(self, weights: Any) -> None:
        self.mesh.set_weights(weights)

    def get_weights(self) -> Any:
        return self.mesh.get_weights()

    def read(self, since: float, now: float) -> Observation:
        self.mesh.advance(now - T0)
        obs = self.mesh.read(since - T0, now - T0)
        return replace(obs, since=since, at=now)


def run_rollout(policy: Policy, scen: Any, tmp_path: Path, seed: int = 3) -> dict[str, Any]:
    """A whole rollout through the real runner; returns the `run --state` file's content."""
    state_file = tmp_path / f"state-{seed}.json"
    mesh = ShiftedMesh(SyntheticMesh(scen, seed=seed))
    runner = RolloutRunner(policy, mesh, mesh, FileStateStore(state_file), LogNotifier(), VirtualClock(T0))
    runner.run(timeout_s=scen.duration_s)
    doc: dict[str, Any] = json.loads(state_file.read_text())
    return doc


@pytest.fixture(scope="module")
def promoted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, dict[str, Any]]:
    policy = load_policy(policy_doc())
    state = run_rollout(policy, scenario(), tmp_path_factory.mktemp("promoted"))
    assert state["phase"] == "Succeeded", state["reason"]
    return policy, state


@pytest.fixture(scope="module")
def rolled_back(tmp_path_factory: pytest.TempPathFactory) -> tuple[Policy, dict[str, Any]]:
    policy = load_policy(policy_doc())
    # Fine at 10%, then broken: the failure is judged in step 2, after one window was kept.
    broken = load_scenario(
        {
            "duration": "2h",
            "traffic": {"rps": 50},
            "versions": {
                "stable": {
                    "errorRate": 0.005,
                    "latency": {"medianMs": 80, "p99Ms": 250},
                    "accuracy": 0.9,
                    "labels": {"delayMeanS": 20, "missing": 0.2},
                    "predictions": [0.7, 0.2, 0.1],
                },
                "candidate": {},
            },
            "changes": [{"at": "3m", "candidate": {"errorRate": 0.15}}],
        },
        "test",
    )
    state = run_rollout(policy, broken, tmp_path_factory.mktemp("rolled-back"))
    assert state["phase"] == "RolledBack", state["reason"]
    return policy, state


# ---------------------------------------------------------------------------- page checks

VOID = {"meta", "br", "img", "input", "hr", "link", "col", "area", "base", "wbr", "source"}


class WellFormed(HTMLParser):
    """Fails on an end tag that does not close the innermost open element; records every tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.titles: list[str] = []  # SVG <title> tooltips
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)
        self._in_title = tag == "title" and "svg" in self.stack

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1]}> (open: {self.stack})"
        self.stack.pop()
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.titles.append(data)


def parse(page: str) -> WellFormed:
    assert page.startswith("<!DOCTYPE html>")
    p = WellFormed()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed elements: {p.stack}"
    return p


def assert_self_contained(page: str, parsed: WellFormed) -> None:
    names = {t for t, _ in parsed.tags}
    assert not names & {"script", "link", "img", "iframe", "object", "embed"}, names
    for tag, attrs in parsed.tags:
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, key)
            assert key not in ("src", "href"), (tag, key, value)
    # The only URL is the SVG namespace (a name, never fetched).
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}


def table_rows(page: str, heading: str) -> list[list[str]]:
    """The body rows (cell texts, unescaped) of the table after the <h2> ``heading``."""
    section = page.split(f"<h2>{heading}</h2>", 1)[1]
    body = section.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = []
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", c)) for c in cells])
    return rows


# ---------------------------------------------------------------------------- tests


def test_a_promoted_rollout_shows_every_step_its_windows_and_the_decision(
    promoted: tuple[Policy, dict[str, Any]],
) -> None:
    policy, state = promoted
    page = render_report(state, policy=policy, source="state.json", generated_at=T0 + 3600)
    parsed = parse(page)
    assert_self_contained(page, parsed)
    text = " ".join(parsed.text)

    assert "Rollout fraud-scorer: 1.4.2 → 1.5.0" in text
    # "all checks passed" only when every check was proven; else what was not (issue 10).
    proven = all(c["proven"] for c in state["checks"])
    words = "all checks passed" if proven else "no check found a regression; not proven: "
    assert "promoted" in text and words in text and state["reason"].startswith(words)
    step_word, step_class = ("pass", "pass") if proven else ("advanced", "open")
    assert "10% → 50% → 100%" in text  # the plan from the policy
    assert "2023-11-14 22:13:20 UTC" in text  # started, on the wall clock
    assert "not the one this rollout ran" not in text
    other = load_policy(policy_doc(steps=[20, 100]))
    assert "not the one this rollout ran" in render_report(state, policy=other)

    # One row per step, with the step's weight, times and verdict.
    steps = table_rows(page, "Steps")
    assert [(r[0], r[1], r[4]) for r in steps] == [
        ("1", "10%", step_word),
        ("2", "50%", step_word),
        ("3", "100%", step_word),
    ]
    # The completed steps' windows: each version's requests and error rate, and accuracy from labels.
    for row, kept in zip(steps, state["earlierWindows"], strict=False):
        stable, candidate = kept["window"]["stable"], kept["window"]["candidate"]
        # Readable numbers: counts as integers, rates as percentages (present/numbers.py).
        assert row[5] == f"{round(stable['requests']):,}" and row[11] == f"{round(candidate['requests']):,}"
        assert row[7] == numbers.percent(stable["errors"] / stable["requests"])
        correct = sum(c for p, a, c in candidate["confusion"] if p == a)
        labeled = sum(c for _, _, c in candidate["confusion"])
        assert row[15] == numbers.percent(correct / labeled)
    assert len(state["earlierWindows"]) == 2

    # The chart: one segment per step, each marked with its verdict; the decision line says why.
    svg_steps = [a for t, a in parsed.tags if t == "line" and (a.get("class") or "").startswith("step ")]
    # three steps and the weight after the decision (a promotion: pass)
    assert [a["class"] for a in svg_steps] == [f"step {step_class}"] * 3 + ["step pass"]
    assert any(t.startswith(f"promoted: {state['reason']}") for t in parsed.titles)
    assert {f"step 1 at 10%: {step_word} (0s to 2m)", f"step 2 at 50%: {step_word} (2m to 4m)"} <= set(
        parsed.titles
    )
    # Per-version metrics over time, one chart per metric with data.
    # Per-version metrics at every analysis (the state's per-tick history), then every check.
    labels = [a.get("aria-label") for t, a in parsed.tags if t == "svg"]
    assert labels == [
        "candidate weight over time",
        "error rate per analysis (the step's window so far)",
        "latency per analysis (p99 solid, p50 dashed)",
        "accuracy per analysis (labels that arrived)",
        *(
            f"{name}: {info['quantity']}"
            for c in state["checks"]
            for name, kept in [(c["name"], state["timeline"]["checks"][c["name"]])]
            for info in kept.values()
        ),
    ]
    # one chart per quantity a check's numbers measured, the latest among them
    assert all(f"{c['name']}: {c['quantity']}" in labels for c in state["checks"])
    assert len(state["timeline"]["points"]) == state["ticks"]

    # The latest checks, with verdict, estimate, bounds and reason.
    checks = table_rows(page, "Latest verdict of every check")
    assert [c[0] for c in checks] == ["errorRate", "accuracy"]
    # The metric's words come from its check kind (mesh_canary.checks), as a tooltip.
    assert {a.get("title") for t, a in parsed.tags if t == "td"} >= {"error rate", "accuracy"}
    for row, check in zip(checks, state["checks"], strict=True):
        assert row[2] == check["verdict"]
        # Readable numbers in the check's unit (a ratio as "1.2x", a difference of rates in
        # signed percent), bounds as one interval.
        tag = "ratio" if check["quantity"].startswith("candidate / stable") else "diff"
        unit = state["timeline"]["checks"][check["name"]][tag]["unit"]
        signed = check["quantity"].startswith("candidate - stable")
        assert unit == ("ratio" if check["quantity"].startswith("candidate / stable") else "rate")
        assert row[3] == numbers.in_unit(check["estimate"], unit, signed) and row[5] == check["quantity"]
        assert row[6] == numbers.interval(check["lower"], check["upper"], unit, signed)
        assert (row[7], row[9]) == (check["bound"], check["reason"])


def test_a_rolled_back_rollout_marks_the_failing_step_and_the_reason(
    rolled_back: tuple[Policy, dict[str, Any]],
) -> None:
    policy, state = rolled_back
    page = render_report(state, policy=policy)
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert state["failedChecks"] == ["errorRate"]
    assert "rolled back" in text and state["reason"] in text
    assert "failed: errorRate" in text

    steps = table_rows(page, "Steps")
    assert [(r[0], r[4]) for r in steps] == [("1", "advanced"), ("2", "fail")]
    assert "judged by the latest checks below" in steps[1][5]
    classes = [a.get("class") for t, a in parsed.tags if t in ("line", "circle")]
    assert "step fail" in classes and "mark fail" in classes and "decide fail" in classes
    # After the decision the chart shows the traffic back on stable (0%).
    after = [a for t, a in parsed.tags if t == "line" and a.get("class") == "step fail"][-1]
    assert after["y1"] == after["y2"] == f"{300 - 40:.1f}"
    assert any(t == f"rolled back: {state['reason']}" for t in parsed.titles)
    [failed] = [r for r in table_rows(page, "Latest verdict of every check") if r[0].startswith("errorRate")]
    assert failed[0] == "errorRate ✗" and failed[2] == "fail"


def test_the_decision_is_worded_from_the_one_outcome_mapping(
    rolled_back: tuple[Policy, dict[str, Any]],
) -> None:
    """A rollback whose write is still retried is not rolled back yet; an older history's
    spelling is shown in today's."""
    policy, state = rolled_back
    pending = {**state, "rollbackPending": True}
    badge = [
        t for t in parse(render_report(pending, policy=policy)).text if t in ("rolled back", "rolling back")
    ]
    assert badge[:1] == ["rolling back"]
    aborted = {**state, "phase": "Aborted"}
    assert "aborted" in parse(render_report(aborted, policy=policy)).text
    old = {"outcome": "rolledBack", "stableVersion": "1", "candidateVersion": "2", "startedAt": "x"}
    page = render_report(state, policy=policy, status={"history": [old]})
    assert table_rows(page, "Rollouts of this resource")[0][2] == "rolled_back"


def test_every_string_from_the_state_is_escaped(promoted: tuple[Policy, dict[str, Any]]) -> None:
    _, state = promoted
    hostile = copy.deepcopy(state)
    hostile["name"] = HOSTILE
    hostile["reason"] = HOSTILE
    hostile["failedChecks"] = [HOSTILE]
    hostile["checks"][0]["reason"] = HOSTILE
    hostile["checks"][0]["name"] = HOSTILE
    hostile["checks"][0]["bound"] = '"><svg onload=alert(1)>'
    status = {
        "stableVersion": HOSTILE,
        "candidateVersion": "</title><script>",
        "conditions": [{"type": "Ready", "status": "False", "reason": HOSTILE, "message": HOSTILE}],
        "history": [{"candidateVersion": HOSTILE, "outcome": "promoted", "reason": HOSTILE}],
    }
    page = render_report(hostile, status=status, source=HOSTILE)
    parsed = parse(page)
    assert_self_contained(page, parsed)
    assert "<script" not in page and "onerror=" not in page.replace("onerror=alert", "")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;svg onload=alert(1)&gt;" in page
    # Read back as text, the hostile strings are shown as they are, in each place.
    text = " ".join(parsed.text)
    assert text.count(HOSTILE) >= 8


def test_accuracy_shows_only_where_labels_exist(tmp_path: Path) -> None:
    policy = load_policy(policy_doc(labels=False))
    state = run_rollout(policy, scenario(labels_missing=1.0), tmp_path)
    assert state["phase"] == "Succeeded", state["reason"]
    page = render_report(state, policy=policy)
    parse(page)
    assert "<th>accuracy</th>" not in page and "accuracy (labelled)" not in page
    assert "<th>error rate</th>" in page


def test_a_rollout_waiting_at_the_gate_has_no_decision_yet(tmp_path: Path) -> None:
    policy = load_policy(policy_doc(gates={"approval": "beforePromotion"}))
    state = run_rollout(policy, replace(scenario(), duration_s=900.0), tmp_path)
    assert state["phase"] == "WaitingForApproval"
    page = render_report(state, policy=policy)
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "waiting for approval" in text and "step 2 at 50% of traffic" in text
    assert not [a for t, a in parsed.tags if (a.get("class") or "").startswith("decide")]
    steps = table_rows(page, "Steps")
    assert [(r[0], r[4]) for r in steps] == [("1", "advanced"), ("2", "running")]


def test_a_model_rollout_status_adds_conditions_history_and_the_policy_from_the_spec(
    promoted: tuple[Policy, dict[str, Any]],
) -> None:
    policy, state = promoted
    status = render_status(
        None,
        state=RolloutState.from_dict(state),
        policy=policy,
        generation=1,
        now=T0 + 600,
        applied_spec=policy_doc()["spec"],
    )
    obj = {**policy_doc(), "status": status}
    page = render_resource_report(obj, generated_at=T0 + 900)
    parsed = parse(page)
    text = " ".join(parsed.text)
    assert "ModelRollout models/fraud-scorer" in text  # the source
    assert "10% → 50% → 100%" in text  # the plan: the policy came from the spec
    conditions = table_rows(page, "Conditions")
    assert conditions[[c[0] for c in conditions].index("Succeeded")][:3] == ["Succeeded", "True", "Promoted"]
    history = table_rows(page, "Rollouts of this resource")
    assert [(h[0], h[1], h[2]) for h in history] == [("1.4.2", "1.5.0", "promoted")]

    # A spec edited since (another candidate): the versions come from the applied spec.
    edited = copy.deepcopy(obj)
    edited["spec"]["candidate"]["version"] = "9.9.9"
    assert "1.4.2 → 1.5.0" in render_resource_report(edited)

    no_rollout = {**policy_doc(), "status": {"phase": "Pending"}}
    with pytest.raises(ReportError, match="no rollout recorded in its status yet"):
        render_resource_report(no_rollout)
    with pytest.raises(ReportError, match="not a readable rollout state"):
        render_report({"name": "x"})


# ---------------------------------------------------------------------------- the command


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_report_command_writes_the_page_of_a_state_file(
    promoted: tuple[Policy, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state = promoted
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy_doc()))

    out = tmp_path / "out" / "page.html"
    out.parent.mkdir()
    code, stdout, stderr = invoke("report", str(state_file), "--out", str(out), "-f", str(policy_file))
    assert code == 0, stderr
    assert stdout.strip() == str(out) and "deprecated" not in stderr
    page = out.read_text(encoding="utf-8")
    parse(page)
    assert "1.4.2 → 1.5.0" in page and html.escape(state["reason"]) in page and str(state_file) in page

    # Without --out: NAME-report.html in the current directory; without -f: no versions known.
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = invoke("report", str(state_file))
    assert code == 0, stderr
    assert stdout.strip() == "fraud-scorer-report.html"
    assert "stable → candidate" in (tmp_path / "fraud-scorer-report.html").read_text()

    # A ModelRollout saved with `kubectl get -o yaml` is a state file too.
    status = render_status(None, state=RolloutState.from_dict(state), policy=None, generation=1, now=T0)
    saved = tmp_path / "mr.yaml"
    saved.write_text(yaml.safe_dump({**policy_doc(), "status": status}))
    code, stdout, stderr = invoke("report", str(saved), "--out", "mr.html")
    assert code == 0, stderr
    assert "1.4.2 → 1.5.0" in (tmp_path / "mr.html").read_text()


def test_report_dash_o_file_still_works_for_one_release_with_a_note(
    promoted: tuple[Policy, dict[str, Any]], tmp_path: Path
) -> None:
    _, state = promoted
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    old = tmp_path / "old.html"
    code, stdout, stderr = invoke("report", str(state_file), "-o", str(old))
    assert code == 0 and stdout.strip() == str(old) and old.is_file()
    assert "`report -o FILE` is deprecated" in stderr and "--out FILE" in stderr
    # Both spellings at once: which one? Bad input, nothing written.
    both = tmp_path / "both.html"
    code, _, stderr = invoke("report", str(state_file), "-o", str(both), "--out", str(both))
    assert code == 2 and "--out" in stderr and not both.exists()


def test_report_command_bad_input_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    not_state = tmp_path / "policy.json"
    not_state.write_text(json.dumps({"hello": "world"}))
    code, _, err = invoke("report", str(not_state), "--out", str(tmp_path / "x.html"))
    assert code == 2 and "not a readable rollout state" in err and "Traceback" not in err
    assert not (tmp_path / "x.html").exists()

    code, _, err = invoke("report", str(tmp_path / "missing.json"))
    assert code == 2 and "no state file" in err

    garbage = tmp_path / "garbage.txt"
    garbage.write_text("[1, 2")
    code, _, err = invoke("report", str(garbage))
    assert code == 2 and "neither JSON nor YAML" in err


@pytest.mark.integration
def test_report_command_reads_a_model_rollout_by_name(
    kube_api: KubeStandIn, promoted: tuple[Policy, dict[str, Any]], tmp_path: Path
) -> None:
    policy, state = promoted
    client = kube_api.api_client()
    custom: Any = kubernetes.client.CustomObjectsApi(client)
    custom.create_namespaced_custom_object(
        "mesh-canary.io", "v1alpha1", "models", "modelrollouts", policy_doc()
    )
    # The controller's own status store writes the status, as in a cluster.
    store = KubeStatusStore(client, "models", "fraud-scorer", policy=policy, generation=1)
    store.read()
    store.write(RolloutState.from_dict(state))

    out = tmp_path / "cluster.html"
    result = CliRunner().invoke(
        main,
        [
            "report",
            "fraud-scorer",
            "-n",
            "models",
            "--kubeconfig",
            str(kube_api.kubeconfig_path),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    parse(page)
    assert "modelrollout models/fraud-scorer" in page and "1.4.2 → 1.5.0" in page
    assert table_rows(page, "Rollouts of this resource")[0][2] == "promoted"

    missing = CliRunner().invoke(
        main, ["report", "nope", "-n", "models", "--kubeconfig", str(kube_api.kubeconfig_path)]
    )
    assert missing.exit_code == 1 and "modelrollout models/nope: not found" in missing.stderr


def test_a_blue_green_rollout_shows_its_preview_window(tmp_path: Path) -> None:
    doc = policy_doc(
        strategy="blueGreen",
        blueGreen={"mirrorPercent": 100, "previewDuration": "2m", "postSwitchWindow": "2m"},
    )
    del doc["spec"]["canary"]
    policy = load_policy(doc)
    state = run_rollout(policy, scenario(), tmp_path)
    assert state["phase"] == "Succeeded", state["reason"]
    page = render_report(state, policy=policy)
    parse(page)
    assert "preview mirroring 100%, then switch to 100%" in page
    preview, switched = table_rows(page, "Steps")
    # Unproven checks (a short simulated window): the steps advanced, never "pass" (issue 10).
    word = "pass" if all(c["proven"] for c in state["checks"]) else "advanced"
    assert preview[1] == "0% (preview, mirrored)" and preview[4] == word
    # The preview's window is stable's baseline for the post-switch checks: its counts are shown.
    baseline = state["stableBaseline"]
    assert preview[5] == f"{round(baseline['stable']['requests']):,}"
    assert switched[1] == "100%" and switched[4] == word


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fraud-scorer", "fraud-scorer-report.html"),
        ("../../evil", "evil-report.html"),
        ("models/fraud", "models_fraud-report.html"),
        ("/etc/passwd", "etc_passwd-report.html"),
        ("--help", "help-report.html"),
        ("..", "rollout-report.html"),
        ("", "rollout-report.html"),
        ("a\x00b", "a_b-report.html"),
    ],
)
def test_the_default_page_name_is_one_plain_file_name(name: str, expected: str) -> None:
    from mesh_canary.present.report import default_report_name

    assert default_report_name(name) == expected


def test_a_rollback_in_the_first_step_still_shows_every_analysis(tmp_path: Path) -> None:
    """The usual failure: rolled back in step 1, before any step window was kept. The
    per-tick history still draws each version and each check, with readable numbers."""
    policy = load_policy(policy_doc())
    state = run_rollout(policy, scenario({"errorRate": 0.2}), tmp_path)
    assert state["phase"] == "RolledBack" and state["stepIndex"] == 0, state["reason"]
    assert state["earlierWindows"] == []
    page = render_report(state, policy=policy)
    parsed = parse(page)
    assert_self_contained(page, parsed)
    assert "No completed step window" not in page
    labels = [a.get("aria-label") for t, a in parsed.tags if t == "svg"]
    assert "error rate per analysis (the step's window so far)" in labels
    assert any(str(label).startswith("errorRate: ") for label in labels)
    # the error-rate lines end at the last analysis; their legend gives the values in percent
    text = " ".join(parsed.text)
    last = state["timeline"]["points"][-1]
    rate = last["candidate"]["errors"] / last["candidate"]["requests"]
    assert f"candidate 1.5.0: {numbers.percent(rate)}" in text
    assert "..." not in text  # nothing is cut


def test_a_check_with_two_bounds_gets_a_chart_per_quantity_each_captioned_by_its_own_numbers() -> None:
    from dataclasses import replace as replaced

    from mesh_canary.core import engine
    from mesh_canary.core.model import Check
    from tests.test_engine import make_policy, obs
    from tests.test_timeline import TwoBoundsJudge

    check = Check(metric="errorRate", name="errorRate", max=0.05, max_increase=0.01)
    policy = make_policy(analysis=replaced(make_policy().analysis, checks=(check,)))
    state = engine.start(policy, T0).state
    judge = TwoBoundsJudge()
    for t in (30.0, 40.0):
        state = engine.tick(policy, state, obs(T0, T0 + t), T0 + t, judge).state
    parsed = parse(render_report(state.to_dict(), policy=policy))
    labels = [a.get("aria-label") for t, a in parsed.tags if t == "svg"]
    assert "errorRate: candidate (error rate)" in labels
    assert "errorRate: candidate - stable (error rate)" in labels
    text = " ".join(parsed.text)
    # the absolute bound's chart is captioned by its own last numbers, not the gap after them
    assert "estimate 1%, bounds 0%-2%; tolerated at most 5%" in text
    assert "estimate +1%, bounds 0% to +2%; tolerated at most +1%" in text
