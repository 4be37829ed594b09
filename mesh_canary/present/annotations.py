"""Problems as CI annotations: `validate -o github` prints one GitHub Actions workflow command
per problem, which GitHub shows on the pull request's diff at the file, line and column.

Format: https://docs.github.com/en/actions/reference/workflow-commands-for-github-actions#setting-an-error-message
(`::error file=F,line=L,col=C,title=T::MESSAGE`; `%`, CR and LF escaped in the message, and
`:` and `,` too in the properties).
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh_canary.core.policy.problems import Problem

TITLE = "mesh-canary validate"


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotation(file: str, problem: Problem, level: str = "error") -> str:
    """One `::error ...::message` line for ``problem`` of ``file`` (its line and column when known)."""
    props = [f"file={_property(file)}"]
    if problem.line is not None:
        props.append(f"line={problem.line}")
        if problem.column is not None:
            props.append(f"col={problem.column}")
    props.append(f"title={_property(TITLE)}")
    message = f"{problem.path}: {problem.message}" if problem.path else problem.message
    return f"::{level} {','.join(props)}::{_data(message)}"


def github_annotations(file: str, problems: Iterable[Problem]) -> list[str]:
    return [github_annotation(file, p) for p in problems]


def github_warning(file: str, message: str) -> str:
    """A warning on a file as a whole (`validate --rps`: a check that cannot reach its samples)."""
    return github_annotation(file, Problem("", message), level="warning")
