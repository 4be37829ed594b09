"""`mesh-canary validate -o github`: one GitHub Actions annotation per problem, at its file,
line and column, read back here the way the Actions runner parses workflow commands
(`::error key=value,...::message`, with %-escapes). Runs the installed console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from mesh_canary.core.policy.problems import Problem
from mesh_canary.present.annotations import github_annotation

MESH_CANARY = str(Path(sys.executable).parent / "mesh-canary")
DATA = Path(__file__).parent / "data" / "invalid"
COMMAND = re.compile(r"^::(?P<level>error|warning|notice)(?: (?P<props>[^:]*))?::(?P<message>.*)$")


def unescape(text: str, prop: bool = False) -> str:
    if prop:
        text = text.replace("%3A", ":").replace("%2C", ",")
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def parse(line: str) -> dict[str, str]:
    """A workflow command as the runner reads it: level, properties and message."""
    m = COMMAND.match(line)
    assert m is not None, f"not a workflow command: {line!r}"
    out = {"level": m["level"], "message": unescape(m["message"])}
    for pair in (m["props"] or "").split(","):
        key, _, value = pair.partition("=")
        out[key] = unescape(value, prop=True)
    return out


def validate(*paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MESH_CANARY, "validate", "-o", "github", *paths], capture_output=True, text=True, timeout=120
    )


def test_every_problem_is_an_annotation_at_its_line_and_column() -> None:
    path = DATA / "many-problems.yaml"
    expected = re.findall(r"^# expect (\d+): (.*)$", path.read_text(), re.MULTILINE)
    assert len(expected) == 6
    done = validate(str(path))
    assert done.returncode == 2, done.stderr
    annotations = [parse(line) for line in done.stdout.splitlines()]
    assert [(a["line"], a["message"]) for a in annotations] == expected
    for a in annotations:
        assert a["level"] == "error" and a["file"] == str(path) and a["title"] == "mesh-canary validate"
        assert int(a["col"]) >= 1


def test_files_with_and_without_problems_together(tmp_path: Path) -> None:
    # A query that only fails when it is built (after the schema and rules) still gets its line.
    query = tmp_path / "query.yaml"
    query.write_text(
        "apiVersion: mesh-canary.io/v1alpha1\n"
        "kind: ModelRollout\n"
        "metadata: {name: fraud-scorer}\n"
        "spec:\n"
        "  virtualService: {name: fraud-scorer}\n"
        "  stable: {destination: {host: fraud-scorer, subset: v1}}\n"
        "  candidate: {destination: {host: fraud-scorer, subset: v2}}\n"
        "  analysis:\n"
        "    checks:\n"
        "      - metric: custom\n"
        "        name: queue_depth\n"
        "        query: 'sum(queue_depth{version=`{{ version }}`})'\n"
        "        max: 10\n"
    )
    valid = Path(__file__).parent.parent / "policies" / "minimal.yaml"
    done = validate(str(valid), str(DATA / "syntax-error.yaml"), str(query))
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert lines[0] == f"{valid}: valid"
    syntax, built = parse(lines[1]), parse(lines[2])
    assert syntax["file"].endswith("syntax-error.yaml") and syntax["line"] == "8"
    assert "does not parse" in syntax["message"]
    assert built["line"] == "12" and built["message"].startswith(
        "spec.analysis.checks[0].query: the query cannot"
    )
    assert len(lines) == 3


def test_a_valid_policy_prints_no_annotation_and_exits_0() -> None:
    done = validate(str(Path(__file__).parent.parent / "policies" / "minimal.yaml"))
    assert done.returncode == 0 and "::" not in done.stdout


def test_what_would_break_the_command_is_escaped() -> None:
    problem = Problem("spec.x", "100% wrong,\nsee: here", line=3, column=4)
    line = github_annotation("dir,1/a:b.yaml", problem)
    assert "\n" not in line
    assert parse(line) == {
        "level": "error",
        "file": "dir,1/a:b.yaml",
        "line": "3",
        "col": "4",
        "title": "mesh-canary validate",
        "message": "spec.x: 100% wrong,\nsee: here",
    }
    # Without a line (a file that cannot be read), the annotation is on the file.
    assert github_annotation("p.yaml", Problem("", "cannot read it")) == (
        "::error file=p.yaml,title=mesh-canary validate::cannot read it"
    )


def test_rps_warnings_become_warning_annotations() -> None:
    policy = str(Path(__file__).parent.parent / "policies" / "minimal.yaml")
    done = subprocess.run(
        [MESH_CANARY, "validate", "-o", "github", "--rps", "0.01", policy],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr  # a warning, not a problem
    warnings = [parse(line) for line in done.stdout.splitlines() if line.startswith("::")]
    assert warnings and all(w["level"] == "warning" and w["file"] == policy for w in warnings)
    assert "WARNING:" not in done.stderr
