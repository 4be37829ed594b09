"""docs/pipelines.md stays true: its YAML parses (the GitHub workflow and the GitLab job have
the shape their runners need), and every `mesh-canary ...` command in it exists with those
options (parsed by the real command line, not run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import yaml

from mesh_canary.cli import main

DOC = Path(__file__).parent.parent / "docs" / "pipelines.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", DOC.read_text(), re.MULTILINE | re.DOTALL)


def commands() -> list[str]:
    """Every mesh-canary command line in the doc's sh and yaml blocks and inline code."""
    text = "\n".join(blocks("sh") + blocks("yaml")).replace("\\\n", " ")
    found = re.findall(r"(?<![\w/-])mesh-canary (?:[^\n|>;)`]|\|\|)*", text)
    found += re.findall(r"`(mesh-canary [^`]+)`", DOC.read_text())
    return [re.sub(r"\$\{\{[^}]*\}\}", "x", c.split(" || ")[0]).strip() for c in found]


def parse(line: str) -> click.Command:
    args = shlex.split(line)[1:]
    command: click.Command = main
    ctx = click.Context(main, info_name="mesh-canary")
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = command.get_command(ctx, name)
        assert sub is not None, f"{line!r}: no command {name!r}"
        command = sub
    if args:  # a mention of a bare command (`mesh-canary simulate`) is not an invocation
        command.make_context(command.name or "", list(args))
    return command


def test_every_command_in_the_doc_parses() -> None:
    lines = commands()
    assert len(lines) >= 10, lines
    names = {parse(line).name for line in lines}
    assert {"validate", "simulate", "run", "report", "ack", "start"} <= names


def test_the_yaml_parses_and_the_workflows_have_their_shape() -> None:
    docs: list[Any] = [yaml.safe_load(b) for b in blocks("yaml")]
    github = next(d for d in docs if isinstance(d, dict) and "jobs" in d)
    assert set(github["jobs"]) == {"check", "deploy"}
    assert github["jobs"]["deploy"]["needs"] == "check"
    steps = [s.get("run", "") for s in github["jobs"]["check"]["steps"]]
    assert any("mesh-canary validate -o github" in s for s in steps)
    gitlab = next(d for d in docs if isinstance(d, dict) and "stages" in d)
    assert gitlab["stages"] == ["check", "deploy"]
    assert {"validate", "simulate", "rollout"} <= set(gitlab)
    assert any("--state" in line for line in gitlab["rollout"]["script"])


def test_the_argocd_patch_the_doc_names_exists() -> None:
    assert "manifests/argocd/argocd-cm-patch.yaml" in DOC.read_text()
    assert (DOC.parent.parent / "manifests" / "argocd" / "argocd-cm-patch.yaml").is_file()
