"""The prediction-label collector's throughput and footprint (issue 12: >= 5,000 predictions/s
ingested and joined on one core; bytes per stored prediction).

1. The store alone, in this process: predictions parsed from KServe payload-logger response
   events (binary mode: headers + body, as the server receives them), stored, then joined
   to their labels, in batches as HTTP requests would bring them; one core by construction.
2. Over HTTP to a real `mesh-canary collector serve` process: (a) one binary CloudEvent per
   request, as KServe's logger sends them, and (b) plain JSON batches of 100 with labels in
   batches of 100. Rates are per CPU-second of the collector process (its utime + stime
   from /proc), i.e. what one core sustains, whatever the load generator costs.
3. Footprint: the sqlite file (+ WAL) per stored, labelled prediction, and the collector
   process's resident memory before and after, per million predictions.

    python bench/collector_bench.py [--quick] [--update docs/benchmarks.md]

run_all.py calls ``section()``; ``--update`` replaces this section alone in a file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from cloudevents.core.bindings.http import to_binary_event  # noqa: E402
from cloudevents.core.v1.event import CloudEvent  # noqa: E402

from mesh_canary.collector.events import RESPONSE_TYPE, Label, parse_cloudevents  # noqa: E402
from mesh_canary.collector.store import Store  # noqa: E402
from mesh_canary.localmesh.mesh import CollectorProcess  # noqa: E402

HEADING = "## Prediction-label collector"
BATCH = 100
WRK_CONNECTIONS = (4, 16, 64)
# The goal's row: 16 senders at once (say 16 model-server pods' loggers). With 4, each
# connection waits for its answer, so the server mostly wakes for one or two events at a time.
GOAL_CONNECTIONS = 16
CLASSES = ("legit", "fraud", "review")
TICKS = os.sysconf("SC_CLK_TCK")


def _messages(n: int, version: str = "fraud-predictor-00002") -> list[tuple[dict[str, str], bytes, str, str]]:
    """(headers, body, id, true label) of n response events with uuid ids, as KServe sends them."""
    out = []
    for i in range(n):
        rid = str(uuid.UUID(int=i + 1))
        body = {
            "predictions": [{"class": CLASSES[i % 3], "score": 0.5 + (i % 50) / 100}],
            "model_version": version,
        }
        event = CloudEvent(
            attributes={
                "id": rid,
                "type": RESPONSE_TYPE,
                "source": f"http://{version}-deployment-7d9c/",
                "datacontenttype": "application/json",
                "inferenceservicename": "fraud",
                "component": "predictor",
                "endpoint": "default",
            },
            data=json.dumps(body).encode(),
        )
        message = to_binary_event(event)
        out.append((message.headers, message.body, rid, CLASSES[(i // 7) % 3]))
    return out


def store_alone(n: int, workdir: Path) -> dict[str, float]:
    """Parse + store + join in this process; file bytes per labelled prediction."""
    messages = _messages(n)
    path = workdir / "store-alone.sqlite"
    store = Store(path, retention_s=30 * 86400.0)
    rss_before = _rss_kib()
    cpu0 = time.process_time()
    for start in range(0, n, BATCH):
        predictions = []
        for headers, body, _, _ in messages[start : start + BATCH]:
            predictions.extend(parse_cloudevents(headers, body, time.time()).predictions)
        store.add_predictions(predictions)
    cpu_ingest = time.process_time() - cpu0
    cpu1 = time.process_time()
    for start in range(0, n, BATCH):
        now = time.time()
        store.add_labels([Label(rid, label, now) for _, _, rid, label in messages[start : start + BATCH]])
    cpu_join = time.process_time() - cpu1
    store.close()  # folds the WAL into the file
    size = path.stat().st_size
    return {
        "n": n,
        "ingest_per_s": n / cpu_ingest,
        "join_per_s": n / cpu_join,
        "both_per_s": n / (cpu_ingest + cpu_join),
        "bytes_per_prediction": size / n,
        "rss_growth_kib_per_million": (_rss_kib() - rss_before) * 1e6 / n,
    }


def _rss_kib() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _proc_rss_kib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1])
    return 0.0


def over_http(n_events: int, n_batched: int, workdir: Path) -> dict[str, float]:
    db = workdir / "http.sqlite"
    server = CollectorProcess(db, workdir)  # `mesh-canary collector serve`
    pid = server.process.pid
    try:
        server.wait_listening(time.monotonic() + 60)
        url = server.url
        rss_start = _proc_rss_kib(pid)
        # (a) one binary-mode event per request, from 4 client threads (keep-alive).
        messages = _messages(n_events, "v-events")
        cpu0 = _proc_cpu_s(pid)
        _parallel(url, [("", m[0], m[1]) for m in messages])
        cpu_events = _proc_cpu_s(pid) - cpu0
        # (b) plain JSON: predictions then labels, in batches of BATCH.
        ids = [str(uuid.UUID(int=10**9 + i)) for i in range(n_batched)]
        preds = [
            ("/predictions", {"content-type": "application/json"}, json.dumps(
                [{"id": i, "version": "v-batched", "prediction": CLASSES[k % 3], "score": 0.7} for k, i in enumerate(ids[s : s + BATCH])]
            ).encode())
            for s in range(0, n_batched, BATCH)
        ]  # fmt: skip
        labels = [
            ("/labels", {"content-type": "application/json"}, json.dumps(
                [{"id": i, "label": CLASSES[k % 2]} for k, i in enumerate(ids[s : s + BATCH])]
            ).encode())
            for s in range(0, n_batched, BATCH)
        ]  # fmt: skip
        cpu1 = _proc_cpu_s(pid)
        _parallel(url, preds)
        cpu2 = _proc_cpu_s(pid)
        _parallel(url, labels)
        cpu_batched = _proc_cpu_s(pid) - cpu1
        cpu_labels = _proc_cpu_s(pid) - cpu2
        rss_end = _proc_rss_kib(pid)
        joined = httpx.get(f"{url}/metrics", timeout=30).text.count("model_feedback_total{")
        assert joined > 0
    finally:
        server.stop(grace_s=60)
    return {
        "events_per_cpu_s": n_events / cpu_events,
        "batched_per_cpu_s": n_batched / cpu_batched,
        "labels_per_cpu_s": n_batched / cpu_labels,
        "rss_start_mib": rss_start / 1024,
        "rss_end_mib": rss_end / 1024,
        "stored": n_events + n_batched,
    }


# wrk's request generator: one binary-mode KServe response event per request, each with its
# own ce-id (thread number and a counter), three classes in turn.
WRK_SCRIPT = r"""
tid = 0
local counter = 0
local classes = {"legit", "fraud", "review"}
local n = 0
function setup(thread) n = n + 1; thread:set("tid", n) end
function request()
  counter = counter + 1
  local body = '{"predictions":[{"class":"' .. classes[counter % 3 + 1] .. '","score":0.73}],"model_version":"v-wrk"}'
  return wrk.format("POST", "/", {
    ["ce-specversion"] = "1.0",
    ["ce-id"] = string.format("%08x-0000-4000-8000-%012x", tid, counter),
    ["ce-type"] = "CE_TYPE",
    ["ce-source"] = "http://v-wrk-deployment-7d9c/",
    ["ce-inferenceservicename"] = "fraud",
    ["ce-component"] = "predictor",
    ["ce-endpoint"] = "default",
    ["content-type"] = "application/json",
  }, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d\n", summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def over_http_wrk(connections: tuple[int, ...], seconds: int, workdir: Path) -> dict[int, float] | None:
    """Events per CPU-second of `collector serve` under wrk (a load generator in C, so the
    server, not the client, sets the pace), one binary CloudEvent per request, for each
    number of keep-alive connections. None when wrk is not installed (`make bench` installs it)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    script = workdir / "ce.lua"
    script.write_text(WRK_SCRIPT.replace("CE_TYPE", RESPONSE_TYPE))
    server = CollectorProcess(workdir / "wrk.sqlite", workdir)
    pid = server.process.pid
    rates: dict[int, float] = {}
    try:
        server.wait_listening(time.monotonic() + 60)
        for c in connections:
            cpu0 = _proc_cpu_s(pid)
            out = subprocess.run(
                [wrk, "-t1", f"-c{c}", f"-d{seconds}s", "-s", str(script), server.url + "/"],
                capture_output=True, text=True, check=True, timeout=seconds + 120,
            ).stdout  # fmt: skip
            cpu = _proc_cpu_s(pid) - cpu0
            requests, non2xx, errors = (int(x) for x in out.split("RESULT ")[1].split()[:3])
            assert non2xx == 0 and errors == 0, out
            rates[c] = requests / cpu
        stored = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'version="v-wrk"' in stored
    finally:
        server.stop(grace_s=60)
    return rates


def _parallel(url: str, requests: list[tuple[str, dict[str, str], bytes]], threads: int = 4) -> None:
    def worker(part: list[tuple[str, dict[str, str], bytes]]) -> None:
        with httpx.Client(timeout=30) as client:
            for path, headers, body in part:
                response = client.post(f"{url}{path}", headers=headers, content=body)
                assert response.status_code == 200, response.text

    workers = [threading.Thread(target=worker, args=(requests[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def section(quick: bool = False) -> list[str]:
    n_store = 100_000 if quick else 1_000_000
    n_events, n_batched = (5_000, 50_000) if quick else (20_000, 200_000)
    with tempfile.TemporaryDirectory(prefix="mesh-canary-collector-bench-") as tmp:
        alone = store_alone(n_store, Path(tmp))
        http = over_http(n_events, n_batched, Path(tmp))
        wrk = over_http_wrk(WRK_CONNECTIONS, 5 if quick else 15, Path(tmp))
    goal = 5000.0
    # One prediction costs its event plus its label: the per-CPU-second rates combine harmonically.
    events = wrk.get(GOAL_CONNECTIONS) if wrk else None
    joined_wrk = 1.0 / (1.0 / events + 1.0 / http["labels_per_cpu_s"]) if events else None
    load = os.getloadavg()[0]

    def verdict(rate: float) -> str:
        return "met" if rate >= goal else "missed"

    return [
        HEADING,
        "",
        "`bench/collector_bench.py` (run by `make bench`): the collector of docs/collector.md, sqlite in WAL mode "
        "(`synchronous=NORMAL`), rates per CPU-second of the process doing the work (one core); "
        f"measured under load average {load:.1f} on this 2-core machine (CPU-seconds grow when other "
        "processes share the cores).",
        "",
        "| what | predictions per CPU-second |",
        "| --- | ---: |",
        f"| store alone, {n_store:,} KServe response events: parse (binary mode) + store, batches of {BATCH} | {alone['ingest_per_s']:,.0f} |",
        f"| store alone, the same {n_store:,} joined to their labels, batches of {BATCH} | {alone['join_per_s']:,.0f} |",
        f"| store alone, ingested **and** joined (one prediction = one event + one label) | **{alone['both_per_s']:,.0f}** |",
        f"| `collector serve` over HTTP, one binary CloudEvent per request (as KServe's logger sends), {n_events:,} events from 4 keep-alive connections | {http['events_per_cpu_s']:,.0f} |",
        *(
            [
                f"| `collector serve` over HTTP, one binary CloudEvent per request from wrk (a load generator in C), {c} keep-alive connections | {rate:,.0f} |"
                for c, rate in wrk.items()
            ]
            if wrk
            else ["| `collector serve` under wrk | not measured: wrk is not installed |"]
        ),
        f"| `collector serve` over HTTP, plain JSON batches of {BATCH}: {n_batched:,} predictions then their labels | **{http['batched_per_cpu_s']:,.0f}** |",
        f"| `collector serve` over HTTP, labels alone in batches of {BATCH} | {http['labels_per_cpu_s']:,.0f} |",
        *(
            [
                f"| `collector serve`, ingested **and** joined: one binary CloudEvent per request (wrk, {GOAL_CONNECTIONS} connections) + its label in a batch of {BATCH} | **{joined_wrk:,.0f}** |"
            ]
            if joined_wrk
            else []
        ),
        "",
        f"Footprint: **{alone['bytes_per_prediction']:.0f} bytes of disk per stored, labelled prediction** "
        f"({alone['bytes_per_prediction'] * 1e6 / 2**20:,.0f} MiB per million; uuid ids, a revision name as the "
        f"version, a score); memory does not grow with stored rows (they live in sqlite; its page cache is bounded): "
        f"the store-alone process grew {alone['rss_growth_kib_per_million'] / 1024:,.1f} MiB per million predictions "
        f"(measured after the bench built its events), and the `collector serve` process held "
        f"{http['rss_start_mib']:.0f} MiB at start and {http['rss_end_mib']:.0f} MiB after "
        f"{http['stored']:,} predictions.",
        "",
        f"Goal (issue 12): >= 5,000 predictions/s ingested and joined on one core: store alone "
        f"**{verdict(alone['both_per_s'])}**, batched HTTP **{verdict(http['batched_per_cpu_s'])}**, one event per "
        f"HTTP request with its label joined, under wrk with {GOAL_CONNECTIONS} connections "
        f"**{verdict(joined_wrk) if joined_wrk else 'not measured (no wrk)'}**. "
        f"The 4-connection row from this benchmark's own Python client ({http['events_per_cpu_s']:,.0f}) is lower "
        "because that client is slow: each request wakes the server alone, so every event pays a wake-up and a "
        "transaction of its own; under a client that keeps the server busy (wrk, or many KServe pods at once), "
        "requests arrive together and share them (group commit); with 4 wrk connections each one still waits "
        "for its answer, so groups stay small. KServe's logger with `mode: response` halves the requests.",
        "",
    ]


def update(path: Path, lines: list[str], heading: str = HEADING) -> None:
    """Replace the section ``heading`` in ``path`` (or add it before ## Notes, else at the end)."""
    text = path.read_text() if path.exists() else ""
    block = "\n".join(lines)
    if heading in text:
        start = text.index(heading)
        after = text.find("\n## ", start + len(heading))
        text = text[:start] + block + ("\n" + text[after + 1 :] if after != -1 else "")
    elif "\n## Notes" in text:
        at = text.index("\n## Notes") + 1
        text = text[:at] + block + "\n" + text[at:]
    else:
        text = text + "\n" + block
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--update", type=Path, help="replace the collector section of this markdown file")
    args = parser.parse_args(argv)
    lines = section(args.quick)
    print("\n".join(lines))
    if args.update:
        update(args.update, lines)
    return {"lines": lines}


if __name__ == "__main__":
    main()
