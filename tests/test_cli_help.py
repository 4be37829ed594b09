"""Every command's --help has an "Examples" block, and every example parses: its command
exists and its options are the command's own (a renamed flag breaks the example's test)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import click
import pytest

from mesh_canary.cli import main

SHELL_BREAKS = {"|", "&&", "&", ";", "||"}


def commands(
    cmd: click.Command = main, path: tuple[str, ...] = ("mesh-canary",)
) -> Iterator[tuple[str, click.Command]]:
    yield " ".join(path), cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, (*path, name))


def help_text(name: str, cmd: click.Command) -> str:
    return cmd.get_help(click.Context(cmd, info_name=name))


def examples(text: str) -> list[str]:
    lines = text.split("Examples:", 1)[1].splitlines()
    out = []
    for line in lines[1:]:
        if not line.strip():
            break
        out.append(line.strip())
    return out


ALL = list(commands())


def test_the_walk_finds_every_command() -> None:
    names = {name for name, _ in ALL}
    assert {"mesh-canary rollout get", "mesh-canary rollout next", "mesh-canary controller"} <= names
    assert len(names) >= 20


@pytest.mark.parametrize(("name", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_examples_that_parse(name: str, cmd: click.Command) -> None:
    text = help_text(name, cmd)
    assert "Examples:" in text, f"`{name} --help` has no Examples section"
    found = examples(text)
    assert found, f"`{name} --help` has an empty Examples section"
    for line in found:
        words = shlex.split(line)
        for i, word in enumerate(words):
            if word in SHELL_BREAKS:
                words = words[:i]
                break
        assert words[0] == "mesh-canary", line
        target: click.Command = main
        args = words[1:]
        while isinstance(target, click.Group) and args and args[0] in target.commands:
            target, args = target.commands[args[0]], args[1:]
        try:
            target.make_context(line, list(args))
        except click.UsageError as e:
            pytest.fail(f"`{name} --help` example {line!r} does not parse: {e}")
