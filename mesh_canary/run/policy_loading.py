"""Loading a policy for real use: the file, the schema and rules, and every check beyond them.

The core (`mesh_canary.core.policy`) checks what a policy says. Some problems only show
when a policy is put to work: a custom query that the PromQL renderer cannot build (an
unterminated string, a placeholder inside a raw `...` string) passes the rules but would
fail at every read, which is "no data" and, much later, a rollback for the wrong reason.
Every driver (`validate`, `run`, `simulate`, `rollout start`, the controller) loads
through here, so such a policy is refused before anything is touched.
"""

from __future__ import annotations

import codecs
from typing import Any

from mesh_canary.checks import kind_of
from mesh_canary.core.model import Policy
from mesh_canary.core.policy import PolicyError, Problem, load_policy, load_policy_text, validate_text
from mesh_canary.core.policy.source import locate
from mesh_canary.metrics.promql import PromQLError, plan_queries, render_custom

__all__ = [
    "MAX_POLICY_BYTES",
    "deployment_problems",
    "load_checked_policy",
    "load_policy_file",
    "read_policy_file",
    "validate_policy_file",
]

MAX_POLICY_BYTES = 1 << 20  # 1 MiB: policies are a few kB; a bigger file is a mistake or an attack
_PLAN_WINDOW = "60s"  # any whole number of seconds: only whether the queries can be built matters


def read_policy_file(path: str) -> str:
    """The text of a policy file, read as UTF-8 with a size cap.

    Raises PolicyError with one sentence naming the file and what is wrong with it.
    """

    def bad(message: str) -> PolicyError:
        return PolicyError([Problem("", message, source=path)])

    try:
        with open(path, "rb") as f:
            # Read at most one byte past the cap: /dev/zero or a 50 MB file stop here.
            data = f.read(MAX_POLICY_BYTES + 1)
    except IsADirectoryError:
        raise bad("is a directory, not a policy file") from None
    except OSError as e:
        raise PolicyError([Problem("", f"cannot read policy {path}: {e.strerror or e}")]) from None
    if len(data) > MAX_POLICY_BYTES:
        raise bad(f"is larger than {MAX_POLICY_BYTES >> 20} MiB; a policy is a few kB of YAML")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise bad("is encoded as UTF-16 or UTF-32; save it as UTF-8")
    if b"\x00" in data:
        # UTF-16 without a byte-order mark has a zero byte beside every ASCII letter.
        raise bad("holds zero bytes: it is a binary or UTF-16 file, not YAML text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise bad(
            f"is not valid UTF-8 (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return text


def deployment_problems(policy: Policy) -> list[Problem]:
    """Problems that the schema and rules cannot see: queries that cannot be built."""
    out: list[Problem] = []
    variables = dict(policy.metrics.variables)
    versions = (policy.stable.metrics_version, policy.candidate.metrics_version)
    for i, check in enumerate(policy.analysis.checks):
        if "custom" not in kind_of(check).signals or not check.query:
            continue
        try:
            for version in versions:
                render_custom(check.query, version, _PLAN_WINDOW, variables)
        except PromQLError as e:
            out.append(Problem(f"spec.analysis.checks[{i}].query", f"the query cannot be built: {e}"))
    if not out:
        try:
            plan_queries(policy, _PLAN_WINDOW)
        except PromQLError as e:
            out.append(Problem("spec.metrics", f"the metrics queries cannot be built: {e}"))
    return out


def load_checked_policy(doc: dict[str, Any], source: str | None = None) -> Policy:
    """`load_policy` plus every check beyond the schema; raises PolicyError listing each problem."""
    policy = load_policy(doc)
    _raise_deployment_problems(policy, source)
    return policy


def _raise_deployment_problems(policy: Policy, source: str | None) -> None:
    problems = deployment_problems(policy)
    if problems:
        raise PolicyError(Problem(p.path, p.message, source=source) for p in problems)


def load_policy_file(path: str) -> Policy:
    """Read, parse, validate and check a policy file; raises PolicyError naming the file."""
    policy = load_policy_text(read_policy_file(path), source=path)
    _raise_deployment_problems(policy, path)
    return policy


def validate_policy_file(path: str) -> list[Problem]:
    """Every problem of a policy file (as `validate` shows them); [] when it can be used."""
    try:
        text = read_policy_file(path)
    except PolicyError as e:
        return e.problems
    problems = validate_text(text, source=path)
    if problems:
        return problems
    try:
        policy = load_policy_text(text, source=path)
    except PolicyError as e:
        return e.problems
    return locate(text, deployment_problems(policy), path)
