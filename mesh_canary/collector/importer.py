"""``mesh-canary collector import-labels FILE``: labels from a warehouse export (CSV with a
header row, or JSON Lines), posted to a running collector's ``/labels`` in batches.

The whole file is read and checked first: a bad row (its line number and what is wrong)
stops the import before anything is sent (exit 2, nothing changed). Then batches go out
in order; each batch is one transaction in the collector, and a label sent twice counts
once, so an import that failed half-way is simply run again.
"""

from __future__ import annotations

import csv
import itertools
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from mesh_canary.errors import BadInput, CouldNotWork

MAX_TEXT = 253


class ImportInputError(BadInput, ValueError):
    """The file is not a label export we can read (exit 2, nothing sent)."""


@dataclass(frozen=True)
class ImportResult:
    labels: int
    outcome: dict[str, int]


def import_labels(
    path: Path, url: str, id_column: str = "id", label_column: str = "label", batch: int = 1000
) -> ImportResult:
    """Check the whole file (ImportInputError names the first bad line; nothing is sent), then
    send it in batches. Two passes over the file, so memory holds one batch, whatever its size."""
    if not path.is_file():
        raise ImportInputError(f"{path} is not a file")
    try:
        total = sum(1 for _ in _rows(path, id_column, label_column))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportInputError(f"{path} is not a UTF-8 CSV or JSON Lines file: {exc}") from None
    if not total:
        raise ImportInputError(f"{path} holds no labels")
    return post_labels(url, _rows(path, id_column, label_column), total, batch)


def _rows(path: Path, id_column: str, label_column: str) -> Iterator[dict[str, str]]:
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json")
    with path.open(newline="", encoding="utf-8") as f:
        if jsonl:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError:
                    raise ImportInputError(f"{path}:{line_no}: not a JSON object") from None
                if not isinstance(item, dict):
                    raise ImportInputError(f"{path}:{line_no}: not a JSON object")
                yield _checked(
                    path, line_no, item.get(id_column), item.get(label_column), id_column, label_column
                )
            return
        reader = csv.DictReader(f)
        missing = [c for c in (id_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportInputError(
                f"{path}: the header row has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])})"
            )
        for row in reader:
            yield _checked(
                path, reader.line_num, row.get(id_column), row.get(label_column), id_column, label_column
            )


def _checked(
    path: Path, line: int, id_: object, label: object, id_column: str, label_column: str
) -> dict[str, str]:
    for name, value in ((id_column, id_), (label_column, label)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (str, int))
            or not 0 < len(str(value)) <= MAX_TEXT
        ):
            raise ImportInputError(f"{path}:{line}: {name} must be 1 to {MAX_TEXT} characters, not {value!r}")
    return {"id": str(id_), "label": str(label)}


def post_labels(
    url: str, rows: Iterable[dict[str, str]], total: int, batch: int = 1000, timeout_s: float = 30.0
) -> ImportResult:
    """Send the rows to ``url``/labels; CouldNotWork if the collector refuses or is unreachable
    (each request has ``timeout_s`` in all, however slowly the collector answers; batches already sent stay, and a rerun is safe)."""
    totals: dict[str, int] = {}
    rows = iter(rows)
    sent = 0
    with httpx.Client(timeout=httpx.Timeout(timeout_s)) as client:
        while chunk := list(itertools.islice(rows, batch)):
            try:
                response = _post_within(client, f"{url.rstrip('/')}/labels", chunk, timeout_s)
            except (httpx.HTTPError, TimeoutError) as exc:
                raise CouldNotWork(
                    f"could not reach the collector at {url} after {sent} of {total} labels: {exc}"
                ) from None
            if response.status_code != 200:
                raise CouldNotWork(
                    f"the collector refused labels {sent + 1}-{sent + len(chunk)}: "
                    f"{response.status_code} {response.text[:300]}"
                )
            sent += len(chunk)
            for name, n in response.json().items():
                totals[name] = totals.get(name, 0) + int(n)
    return ImportResult(sent, totals)


def _post_within(client: httpx.Client, url: str, body: object, timeout_s: float) -> httpx.Response:
    """One POST that ends by ``timeout_s`` in all: httpx's timeouts bound each socket step, not
    a collector that trickles its answer; on time-out the caller gives up (and exits)."""
    done: list[httpx.Response | httpx.HTTPError] = []

    def send() -> None:
        try:
            done.append(client.post(url, json=body))
        except httpx.HTTPError as exc:
            done.append(exc)

    worker = threading.Thread(target=send, name="import-labels-post", daemon=True)
    worker.start()
    worker.join(timeout_s)
    # httpx's own per-step timeout may fire first (it races the join): the same sentence.
    if not done or isinstance(done[0], httpx.TimeoutException):
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    if isinstance(done[0], httpx.HTTPError):
        raise done[0]
    return done[0]
