"""A policy's problems: each with the path of its field, a sentence, and its line when known."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mesh_canary.errors import BadInput

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_DEPTH = 32  # no field of the schema lies half as deep


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy: the field's path and a sentence saying what is wrong."""

    path: str  # e.g. "spec.canary.steps[2]"; "" for the document as a whole
    message: str
    line: int | None = None  # 1-based, when the policy came from YAML text
    column: int | None = None
    source: str | None = None  # file name or "<policy>", when known

    def __str__(self) -> str:
        where = ""
        if self.source is not None:
            where = self.source
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class PolicyError(BadInput):
    """The policy is invalid (exit 2); `problems` lists every reason."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: list[Problem] = list(problems)
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            text = f"the policy has {len(self.problems)} problems:\n" + "\n".join(
                f"  {p}" for p in self.problems
            )
        super().__init__(text)

    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


def format_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif IDENT.fullmatch(str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{json.dumps(str(part))}]"
    return out


def number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def words(names: Iterable[str], last: str = "or") -> str:
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def path_order(doc: Any) -> dict[str, int]:
    """Every path in the document, in document order, so problems can be listed in that order."""
    order: dict[str, int] = {}

    def walk(node: Any, parts: list[Any]) -> None:
        order.setdefault(format_path(parts), len(order))
        if len(parts) > MAX_DEPTH:  # no field of the schema lies this deep
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, [*parts, key])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, [*parts, i])

    walk(doc, [])
    return order


def nearest(path: str, table: Mapping[str, Any]) -> Any:
    """The entry for `path`, or for its closest ancestor that the table has."""
    while path:
        if path in table:
            return table[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return table.get("")
