"""A policy written as YAML text: parsed with the line and column of every field, so each
problem can say where it is; refused when it is not one small YAML mapping."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

from mesh_canary.core.policy.problems import MAX_DEPTH, Problem, format_path, nearest
from mesh_canary.core.policy.rules import validate_document

MAX_VALUES = 100_000  # YAML aliases can expand a small file into a huge tree


def _yaml_problem(message: str, mark: Any, source: str) -> Problem:
    if mark is None:
        return Problem("", message, source=source)
    return Problem("", message, mark.line + 1, mark.column + 1, source)


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[str, tuple[int, int]], list[Problem]]:
    """The document, the line/column of every path in it, and problems found while parsing.

    The document is None when parsing stopped; then the problems say why.
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)
        nodes: list[yaml.Node] = []
        while loader.check_node():
            node = loader.get_node()
            if node is not None:
                nodes.append(node)
            if len(nodes) > 1:
                message = "the file holds more than one YAML document; a policy is exactly one"
                return None, {}, [_yaml_problem(message, nodes[1].start_mark, source)]
        too_big = _too_big(nodes[0]) if nodes else None
        if too_big:
            return None, {}, [_yaml_problem(too_big, nodes[0].start_mark, source)]
        if not nodes or not isinstance(nodes[0], yaml.MappingNode):
            message = (
                "the file holds no YAML mapping; a policy starts with apiVersion, kind, metadata and spec"
            )
            return None, {}, [_yaml_problem(message, nodes[0].start_mark if nodes else None, source)]
        problems = _duplicate_keys(nodes[0], [], source)
        data = loader.construct_document(nodes[0])
        return data, _marks(nodes[0]), problems
    except RecursionError:
        return (
            None,
            {},
            [_yaml_problem(f"the YAML is nested more than {MAX_DEPTH} levels deep", None, source)],
        )
    except (ValueError, OverflowError) as e:
        # A value YAML recognises but Python cannot build: a 5000-digit integer (Python's
        # digit limit), a date such as 2024-13-45.
        reason = " ".join(str(e).split())[:200]
        if "integer string conversion" in reason:
            reason = "an integer has more than 4300 digits"
        return (
            None,
            {},
            [_yaml_problem(f"the YAML holds a value that cannot be read: {reason}", None, source)],
        )
    except yaml.YAMLError as e:
        reason = " ".join(str(getattr(e, "problem", None) or e).split())
        if getattr(e, "context", None):
            reason = f"{reason} ({e.context})"  # type: ignore[attr-defined]
        return (
            None,
            {},
            [_yaml_problem(f"the YAML does not parse: {reason}", getattr(e, "problem_mark", None), source)],
        )
    finally:
        if loader is not None:
            loader.dispose()


def _too_big(root: yaml.Node) -> str | None:
    """Why the node tree is too deep or, with aliases expanded, too large to be a policy."""
    stack: list[tuple[yaml.Node, int]] = [(root, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            return f"the YAML is nested more than {MAX_DEPTH} levels deep"
        if count > MAX_VALUES:
            return f"the YAML holds more than {MAX_VALUES} values (aliases expanded); a policy is far smaller"
        if isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
    return None


def _duplicate_keys(node: yaml.Node, parts: list[Any], source: str) -> list[Problem]:
    out: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key_node.tag != "tag:yaml.org,2002:merge":
                if key in seen:
                    mark = key_node.start_mark
                    out.append(
                        Problem(
                            format_path([*parts, key]),
                            "this key appears twice in the same mapping; YAML would keep only the last",
                            mark.line + 1,
                            mark.column + 1,
                            source,
                        )
                    )
                seen.add(key)
            out.extend(_duplicate_keys(value_node, [*parts, key], source))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.extend(_duplicate_keys(item, [*parts, i], source))
    return out


def _marks(root: yaml.Node) -> dict[str, tuple[int, int]]:
    marks: dict[str, tuple[int, int]] = {}
    seen: set[int] = set()

    def walk(node: yaml.Node, parts: list[Any], mark: Any) -> None:
        marks.setdefault(format_path(parts), (mark.line + 1, mark.column + 1))
        if id(node) in seen:  # aliases can make cycles
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    walk(value_node, [*parts, key_node.value], key_node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, [*parts, i], item.start_mark)

    walk(root, [], root.start_mark)
    return marks


def validate_text(text: str, source: str = "<policy>") -> list[Problem]:
    """Every problem in a policy written as YAML (or JSON) text, each with its line when known."""
    return parse_and_validate(text, source)[1]


def parse_and_validate(text: str, source: str) -> tuple[Any, list[Problem]]:
    data, marks, problems = _parse_yaml(text, source)
    if data is None:
        return None, problems
    found = validate_document(data)
    located = []
    for p in found:
        line, column = nearest(p.path, marks) or (None, None)
        located.append(Problem(p.path, p.message, line, column, source))
    both = sorted(problems + located, key=lambda p: (p.line or 0, p.column or 0))
    return data, both


def locate(text: str, problems: Iterable[Problem], source: str) -> list[Problem]:
    """``problems`` with the line and column of their field in ``text`` (or of its closest
    ancestor), for problems found after parsing (a query that cannot be built)."""
    _, marks, _ = _parse_yaml(text, source)
    out = []
    for p in problems:
        line, column = nearest(p.path, marks) or (None, None)
        out.append(Problem(p.path, p.message, line, column, source))
    return out
