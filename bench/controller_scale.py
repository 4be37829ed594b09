"""The controller at scale: N ModelRollouts at once against one real Prometheus (issue 14).

For each N (10, 100, 1,000): the API stand-in (tests/kube_standin.py, in a child process) holds
N VirtualServices and N ModelRollouts created before the controller starts; a synthetic
exporter (a child process) counts requests and latency for each service and version at a
fixed total rate, split by each VirtualService's current weights (read from the stand-in
every second); one real Prometheus (Debian ``prometheus``) scrapes it; ``mesh-canary
controller`` runs as a separate process against the stand-in's kubeconfig. Every 20th
rollout has a bad candidate (20% errors) and is rolled back. Measured:

- tick lateness: the controller's own ``mesh_canary_tick_lateness_seconds`` histogram (wall
  time at the start of each analysis's turn minus when it was due), p50/p99/max as the upper
  bound of the bucket that holds them, and its mean (sum / count). Not ``lastTickAt``: with
  analyses on the grid of the interval, a status's ``lastTickAt`` is the grid instant the
  analysis read at, not when it ran, so it cannot show lateness;
- failed check to 100%-stable write: from the instant the analysis that failed read at (its
  due grid instant, ``lastTickAt``: so its lateness is included) to the commit of the
  VirtualService write (the stand-in's clock), p50/p99;
- Prometheus queries per second and per analysis (Prometheus's own
  ``prometheus_http_requests_total``, the controller's ``mesh_canary_ticks_total``);
- API requests per second by verb (the stand-in counts them);
- the controller's CPU seconds and peak resident memory (``/proc/<pid>``);
- wall time from the controller's start to every rollout finished.

Head-of-line blocking: the largest N runs again with 5% of the rollouts reading a
Prometheus address that accepts connections and never answers (allowed with
``--allow-metrics-address``); the others' lateness is compared.

    python bench/controller_scale.py [--quick] [--sizes 10,100] [--update docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from collector_bench import update  # noqa: E402  (one way to replace a section of docs/benchmarks.md)

HEADING = "## Controller at scale"
PLOT = ROOT / "docs" / "controller-scale.png"
NS = "bench"
INTERVAL_S = 10.0
RATE = 50.0  # requests per second per service, split by the VirtualService's weights
SCRAPE_S = 5.0
BAD_EVERY = 20  # every 20th rollout's candidate answers 20% errors
SLOW_SHARE = 0.05
LATENCY_LE = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)  # ms; +Inf after
LATENCY_P = (0.05, 0.25, 0.35, 0.2, 0.1, 0.04, 0.007, 0.002, 0.0008)  # per bucket; the rest past 2.5s
ERRORS = {"good": 0.005, "bad": 0.2}
RUN_LIMIT_S = 900.0
LATENESS_TOP_S = 60.0  # the largest finite bucket of mesh_canary_tick_lateness_seconds
MR_RES = "mesh-canary.io/v1alpha1/modelrollouts"
VS_RES = "networking.istio.io/v1/virtualservices"
STANDIN_KEY = b"controller-scale"  # the stand-in process's question socket (127.0.0.1 only)


def name_of(i: int) -> str:
    return f"svc-{i:04d}"


# --------------------------------------------------------------------------- the exporter


def exporter_main(weights_path: str, port: int, bad: list[str]) -> None:
    """A child process: istio_requests_total and istio_request_duration_milliseconds_bucket
    for every service in ``weights_path`` (a JSON {name: candidate weight}), advanced every
    second at RATE requests/s split by the weights."""
    import numpy as np

    names: list[str] = sorted(json.loads(Path(weights_path).read_text()))
    n = len(names)
    rng = np.random.default_rng(0)
    p_err = np.full((n, 2), ERRORS["good"])
    for i, name in enumerate(names):
        if name in bad:
            p_err[i, 1] = ERRORS["bad"]
    probs = np.array([*LATENCY_P, 1 - sum(LATENCY_P)])
    ok = np.zeros((n, 2))
    err = np.zeros((n, 2))
    buckets = np.zeros((n, 2, len(probs)))
    lock = threading.Lock()
    heads: list[tuple[str, str]] = []
    for name in names:
        for version in ("v1", "v2"):
            labels = (
                f'reporter="destination",destination_service_name="{name}",'
                f'destination_service_namespace="{NS}",destination_version="{version}"'
            )
            heads.append((labels, name))

    def advance() -> None:
        last = time.monotonic()
        while True:
            time.sleep(1.0)
            try:
                weights = json.loads(Path(weights_path).read_text())
            except (OSError, ValueError):
                continue
            now = time.monotonic()
            w = np.array([weights.get(name, 0) for name in names], dtype=float) / 100.0
            total = rng.poisson(RATE * (now - last), n)
            last = now
            cand = rng.binomial(total, w)
            per = np.stack([total - cand, cand], axis=1)
            errors = rng.binomial(per, p_err)
            lat = rng.multinomial(per, probs)
            with lock:
                ok[:] += per - errors
                err[:] += errors
                buckets[:] += lat

    def render() -> bytes:
        with lock:
            o, e, b = ok.copy(), err.copy(), np.cumsum(buckets, axis=2)
        out = [
            "# TYPE istio_requests_total counter",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        les = [*(str(x) for x in LATENCY_LE), "+Inf"]
        for k, (labels, _) in enumerate(heads):
            i, v = divmod(k, 2)
            out.append(f'istio_requests_total{{{labels},response_code="200"}} {o[i, v]:.0f}')
            out.append(f'istio_requests_total{{{labels},response_code="500"}} {e[i, v]:.0f}')
            out.extend(
                f'istio_request_duration_milliseconds_bucket{{{labels},le="{le}"}} {b[i, v, j]:.0f}'
                for j, le in enumerate(les)
            )
            out.append(f"istio_request_duration_milliseconds_count{{{labels}}} {b[i, v, -1]:.0f}")
        return ("\n".join(out) + "\n").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    threading.Thread(target=advance, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def stall_main(port: int) -> None:
    """A child process: a 'Prometheus' that accepts every connection and never answers."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(3600)

        do_POST = do_GET

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# --------------------------------------------------------------------------- the resources


def model_rollout(name: str, prometheus: str) -> dict[str, Any]:
    return {
        "apiVersion": "mesh-canary.io/v1alpha1",
        "kind": "ModelRollout",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "virtualService": {"name": name, "routes": ["primary"]},
            "stable": {
                "version": "1.0",
                "metricsVersion": "v1",
                "destination": {"host": name, "subset": "v1"},
            },
            "candidate": {
                "version": "2.0",
                "metricsVersion": "v2",
                "destination": {"host": name, "subset": "v2"},
            },
            "canary": {"steps": [10, 50, 100], "minStepDuration": "20s", "maxStepDuration": "120s"},
            "analysis": {
                "interval": f"{INTERVAL_S:.0f}s",
                "minRequests": 50,
                "noDataTimeout": "60s",
                "checks": [
                    {"metric": "errorRate", "max": 0.05},
                    {"metric": "latency", "quantile": 0.99, "max": "2s"},
                ],
            },
            "metrics": {"provider": "prometheus", "profile": "istio", "address": prometheus},
        },
    }


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    n: int
    slow: int
    wall_s: float
    finished: int
    phases: dict[str, int]
    late_s: tuple[float, float, float]  # every analysis (the histogram's bucket bounds): p50, p99, max
    late_n: int
    rollback_s: tuple[float, float]  # failed check to 100%-stable write: p50, p99
    rollback_n: int
    ticks: float
    queries: float
    api: dict[str, float]  # verb -> requests per second
    cpu_s: float
    peak_rss_mib: float
    lateness_hist: dict[str, float] = field(default_factory=dict)  # the controller's: le -> count
    late_mean_s: float = math.nan  # the histogram's sum / count
    peak_threads: int = -1  # the controller's threads, sampled every second
    workers: int | None = None  # the controller's --workers (None: its default)
    load_avg: float = math.nan  # the highest 1-minute load average sampled during the run
    api_calls: dict[str, float] = field(default_factory=dict)  # "verb resource" -> requests in the run

    @property
    def queries_per_tick(self) -> float:
        return self.queries / self.ticks if self.ticks else math.nan


def quantile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def hist_quantile(hist: dict[str, float], q: float) -> float:
    """The upper bound of the bucket of a cumulative histogram (le -> count) that holds the
    ``q`` quantile (inf: past the last finite bound; nan: no observation)."""
    bounds = sorted((float(le), count) for le, count in hist.items())
    total = bounds[-1][1] if bounds else 0.0
    if not total:
        return math.nan
    return next(le for le, count in bounds if count >= q * total)


def _child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_status(pid: int, key: str) -> int:
    """A number from /proc/<pid>/status (``VmHWM`` in KiB, ``Threads``); -1 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return -1


def _proc_peak_rss_mib(pid: int) -> float:
    kib = _proc_status(pid, "VmHWM")
    return kib / 1024 if kib >= 0 else math.nan


def _weights(handler: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for (res, _, name), obj in handler.objects.items():
        if res.plural == "virtualservices" and not obj.deleted:
            route = obj.raw["spec"]["http"][0]["route"]
            out[name] = int(route[1].get("weight", 0))
    return out


def _phases(handler: Any) -> Counter[str]:
    return Counter(
        str((obj.raw.get("status") or {}).get("phase") or "Pending")
        for (res, _, _), obj in handler.objects.items()
        if res.plural == "modelrollouts" and not obj.deleted
    )


def _rollbacks(handler: Any, names: list[str]) -> list[float]:
    """Failed check to 100%-stable write, per rolled-back rollout among ``names``: from the
    instant the failing analysis read at (its ``lastTickAt``) to the commit of the write."""
    from mesh_canary.kube.status import saved_state

    out: list[float] = []
    for name in names:
        states = [
            saved_state(v.raw.get("status"))
            for v in handler.objects[MR_RES, NS, name].history
            if v is not None
        ]
        prev = next((state for state in reversed(states) if state is not None), None)
        if prev is None or prev.phase.value != "RolledBack" or prev.last_tick_at is None:
            continue
        for v in handler.objects[VS_RES, NS, name].history:
            if v is None:
                continue
            weight = v.raw["spec"]["http"][0]["route"][1].get("weight", 0)
            at = handler.committed_at.get(int(v.raw["metadata"]["resourceVersion"]), 0.0)
            if weight == 0 and at >= prev.last_tick_at:
                out.append(at - prev.last_tick_at)
                break
    return out


# What the benchmark asks the stand-in's process (`standin_main`): a name and its arguments.
STANDIN_CALLS: dict[str, Any] = {
    "phases": lambda h: dict(_phases(h)),
    "requests": lambda h: dict(h.requests),
    "rollbacks": _rollbacks,
}


def standin_main(workdir: str, weights_path: str, address_path: str) -> None:
    """A child process: the API stand-in (tests/kube_standin.py), as a real API server runs
    apart from the controller and from whoever measures it. It writes each VirtualService's
    candidate weight to ``weights_path`` every second (for the exporter) and answers the
    benchmark's questions (`STANDIN_CALLS`) on a local socket whose address it writes to
    ``address_path`` once the server is up."""
    from multiprocessing.connection import Listener

    from tests.crd_schema import ISTIO_CRDS, MODELROLLOUT_CRD, load_yaml
    from tests.kube_standin import KubeStandIn

    crds = [load_yaml(p) for p in [*ISTIO_CRDS, MODELROLLOUT_CRD]]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        KubeStandIn(crds, workdir=Path(workdir), keep_requests=False) as kube,
        Listener(("127.0.0.1", 0), authkey=STANDIN_KEY) as listener,
        contextlib.ExitStack() as weights,
    ):
        path = Path(address_path)
        path.with_suffix(".tmp").write_text(json.dumps([kube.url, *listener.address]))
        path.with_suffix(".tmp").replace(path)

        def answer(name: str, args: tuple[Any, ...]) -> Any:
            if name == "write_weights":  # once every VirtualService exists (the exporter read their names)
                return weights.enter_context(_weights_file(kube, Path(weights_path), stop))
            fn = STANDIN_CALLS[name]
            return kube.call(lambda h: fn(h, *args))

        def serve() -> None:
            while not stop.is_set():
                with contextlib.suppress(EOFError, OSError), listener.accept() as conn:
                    while True:
                        name, args = conn.recv()
                        conn.send(answer(name, args))

        threading.Thread(target=serve, daemon=True).start()
        stop.wait()


class StandIn:
    """The benchmark's side of `standin_main`: the stand-in's URL and its answers."""

    def __init__(self, workdir: Path, weights_path: Path) -> None:
        address = workdir / "address.json"
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = _child("standin", str(workdir), str(weights_path), str(address))
        deadline = time.monotonic() + 60
        while not address.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _stop(self.proc)
                raise RuntimeError("the API stand-in's process did not start")
            time.sleep(0.1)
        self.url, host, port = json.loads(address.read_text())
        self.kubeconfig_path = workdir / "kubeconfig"
        from multiprocessing.connection import Client

        self._conn = Client((host, port), authkey=STANDIN_KEY)

    def call(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        return self._conn.recv()

    def api_client(self) -> Any:
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.url
        return kubernetes.client.ApiClient(config)

    def close(self) -> None:
        self._conn.close()
        _stop(self.proc)


@contextlib.contextmanager
def _weights_file(kube: Any, path: Path, stop: threading.Event) -> Iterator[None]:
    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(kube.call(_weights)))
                tmp.replace(path)
            stop.wait(1.0)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=120).text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def _prometheus_queries(prom: Any) -> float:
    """Queries Prometheus has answered (its own counter, read from its /metrics)."""
    samples = _scrape(f"{prom.url}/metrics").get("prometheus_http_requests_total", [])
    return sum(v for labels, v in samples if labels.get("handler", "").startswith("/api/v1/query"))


def run(n: int, slow_share: float = 0.0, workers: int | None = None) -> Result:
    import kubernetes.client

    from mesh_canary.localmesh.prometheus import PrometheusServer, ScrapeJob, free_port
    from tests.conftest import virtual_service

    names = [name_of(i) for i in range(n)]
    slow = set(names[: max(1, round(n * slow_share))]) if slow_share else set()
    # Bad candidates among the others (every BAD_EVERY-th, counted from the end).
    bad = [x for i, x in enumerate(reversed(names)) if i % BAD_EVERY == BAD_EVERY - 1 and x not in slow]
    if not bad:
        bad = [names[-1]]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mesh-canary-scale-")))
        weights_path = tmp / "weights.json"
        weights_path.write_text(json.dumps(dict.fromkeys(names, 0)))
        # The API stand-in in a process of its own: a real API server does not share the
        # controller's (nor the benchmark's) cores and interpreter lock.
        kube = StandIn(tmp / "kube", weights_path)
        stack.callback(kube.close)
        exporter_port, stall_port, metrics_port = free_port(), free_port(), free_port()
        exporter = _child("exporter", str(weights_path), str(exporter_port), ",".join(bad))
        stack.callback(_stop, exporter)
        stall_url = f"http://127.0.0.1:{stall_port}"
        if slow:
            stall = _child("stall", str(stall_port))
            stack.callback(_stop, stall)
        prom = stack.enter_context(
            PrometheusServer(
                [ScrapeJob("exporter", (f"127.0.0.1:{exporter_port}",))], scrape_interval_s=SCRAPE_S
            )
        )
        prom.wait_for_series("istio_requests_total", count=2 * n, timeout_s=60)

        api = kube.api_client()
        custom = kubernetes.client.CustomObjectsApi(api)
        for name in names:
            custom.create_namespaced_custom_object(
                "networking.istio.io", "v1", NS, "virtualservices", virtual_service(name, NS)
            )
            custom.create_namespaced_custom_object(
                "mesh-canary.io",
                "v1alpha1",
                NS,
                "modelrollouts",
                model_rollout(name, stall_url if name in slow else prom.url),
            )

        kube.call("write_weights")
        requests_before = Counter(kube.call("requests"))
        queries_before = _prometheus_queries(prom)
        log = (tmp / "controller.log").open("wb")
        stack.callback(log.close)
        command = [
            str(Path(sys.executable).parent / "mesh-canary"),
            "controller",
            "--kubeconfig",
            str(kube.kubeconfig_path),
            "--namespace",
            NS,
            "--metrics-addr",
            f"127.0.0.1:{metrics_port}",
            "--prometheus",
            prom.url,
            "--allow-metrics-address",
            stall_url,
        ]
        if workers is not None:
            command += ["--workers", str(workers)]
        t0 = time.time()
        controller = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_stop, controller)
        deadline = time.monotonic() + RUN_LIMIT_S
        done_at = math.nan
        threads = 0
        load = 0.0
        while time.monotonic() < deadline:
            if controller.poll() is not None:
                raise RuntimeError(f"the controller exited: {(tmp / 'controller.log').read_text()[-2000:]}")
            threads = max(threads, _proc_status(controller.pid, "Threads"))
            load = max(load, os.getloadavg()[0])
            phases = Counter(kube.call("phases"))
            if sum(phases[p] for p in ("Succeeded", "RolledBack", "Aborted")) == n:
                done_at = time.time()
                break
            time.sleep(1.0)
        wall = (done_at if done_at == done_at else time.time()) - t0
        cpu = _proc_cpu_s(controller.pid)
        rss = _proc_peak_rss_mib(controller.pid)
        own = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        queries = _prometheus_queries(prom) - queries_before
        requests = Counter(kube.call("requests"))
        requests.subtract(requests_before)
        phases = Counter(kube.call("phases"))
        _stop(controller)

        by_verb: Counter[str] = Counter()
        for (verb, _), count in requests.items():
            by_verb[verb] += count
        ticks = sum(v for _, v in own.get("mesh_canary_ticks_total", []))
        hist = {lbl["le"]: v for lbl, v in own.get("mesh_canary_tick_lateness_seconds_bucket", [])}
        late_sum = sum(v for _, v in own.get("mesh_canary_tick_lateness_seconds_sum", []))
        late_n = sum(v for _, v in own.get("mesh_canary_tick_lateness_seconds_count", []))

        rollback: list[float] = kube.call("rollbacks", [x for x in names if x not in slow])
        return Result(
            n=n,
            slow=len(slow),
            wall_s=wall,
            finished=sum(phases[p] for p in ("Succeeded", "RolledBack", "Aborted")),
            phases=dict(phases),
            late_s=(hist_quantile(hist, 0.5), hist_quantile(hist, 0.99), hist_quantile(hist, 1.0)),
            late_n=int(late_n),
            rollback_s=(quantile(rollback, 0.5), quantile(rollback, 0.99)),
            rollback_n=len(rollback),
            ticks=ticks,
            queries=queries,
            api={verb: count / wall for verb, count in sorted(by_verb.items())},
            api_calls={f"{verb} {res}": count for (verb, res), count in sorted(requests.items()) if count},
            cpu_s=cpu,
            peak_rss_mib=rss,
            lateness_hist=hist,
            late_mean_s=late_sum / late_n if late_n else math.nan,
            peak_threads=threads,
            workers=workers,
            load_avg=load,
        )


# --------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    if x == math.inf:
        return f"> {1000 * LATENESS_TOP_S:,.0f}"
    return "-" if x != x else f"{1000 * x:,.0f}"


def row(r: Result) -> str:
    api = ", ".join(f"{verb} {rate:.1f}" for verb, rate in r.api.items())
    p50, p99, top = r.late_s
    return (
        f"| {r.n:,}{'' if r.workers is None else f' (`--workers {r.workers}`)'} | {r.slow} | {r.finished:,}/{r.n:,} | {r.wall_s:,.0f} | ≤ {_ms(p50)} / ≤ {_ms(p99)} / ≤ {_ms(top)}; "
        f"mean {_ms(r.late_mean_s)} ({r.late_n:,}) | {_ms(r.rollback_s[0])} / {_ms(r.rollback_s[1])} ({r.rollback_n}) | "
        f"{r.queries / r.wall_s:,.1f} | {r.queries_per_tick:.2f} | {api} | {r.cpu_s:,.1f} | {r.peak_rss_mib:,.0f} | {r.peak_threads if r.peak_threads >= 0 else '-'} | {'-' if r.load_avg != r.load_avg else f'{r.load_avg:.1f}'} |"
    )


def calls(r: Result) -> str:
    """API requests per analysis by verb and resource (the stand-in's count over the controller's ticks)."""
    per = ", ".join(f"{k} {v / r.ticks:.2f}" for k, v in r.api_calls.items()) if r.ticks else "-"
    return f"N={r.n:,}: API requests per analysis: {per}"


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plain = [r for r in results if not r.slow and r.workers is None]
    ns = [r.n for r in plain]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    for i, label in enumerate(("p50", "p99", "max")):
        ax.plot(ns, [r.late_s[i] for r in plain], marker="o", label=label)
    for r in results:
        if r.slow:
            ax.plot([r.n], [r.late_s[1]], marker="x", color="red", label=f"p99, {r.slow} slow")
    ax.set(xscale="log", yscale="symlog", xlabel="rollouts", ylabel="seconds", title="tick lateness")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(ns, [r.queries_per_tick for r in plain], marker="o", label="Prometheus queries per analysis")
    ax.plot(ns, [r.cpu_s / r.wall_s for r in plain], marker="o", label="controller CPU (cores)")
    ax.set(xscale="log", xlabel="rollouts", title="load per analysis, CPU")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(ns, [r.peak_rss_mib for r in plain], marker="o", label="peak RSS (MiB)")
    ax.plot(ns, [r.wall_s for r in plain], marker="o", label="wall time to finish (s)")
    ax.set(xscale="log", yscale="log", xlabel="rollouts", title="memory, wall time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(
    quick: bool = False,
    sizes: list[int] | None = None,
    plot_path: Path | None = PLOT,
    slow_n: int | None = None,
    saved: Path | None = None,
    workers: int | None = None,
) -> list[str]:
    """Run every size, then ``slow_n`` (default: 100) with SLOW_SHARE slow rollouts.

    ``saved``: a JSON file of earlier results; the ones it holds are not run again and the
    new ones are added to it (to run the sizes one at a time).
    """
    sizes = sizes or ([10, 100] if quick else [10, 100, 1000])
    # The slow run at N = 100 by default: at 1,000 the controller does not finish in RUN_LIMIT_S
    # on this machine yet, and two such runs would take the benchmark past half an hour.
    slow_n = (100 if 100 in sizes else sizes[-1]) if slow_n is None else slow_n
    plan = [(n, 0.0) for n in sizes] + ([(slow_n, SLOW_SHARE)] if slow_n else [])
    known = (
        {(r["n"], r["slow"] > 0): r for r in json.loads(saved.read_text())}
        if saved and saved.exists()
        else {}
    )
    results = []
    for n, share in plan:
        if (n, share > 0) in known and known[(n, share > 0)].get("workers") == workers:
            results.append(Result(**known[(n, share > 0)]))
            continue
        print(
            f"controller scale: N={n}" + (f", {share:.0%} behind a stalled Prometheus" if share else ""),
            flush=True,
        )
        results.append(run(n, share, workers))
        print(row(results[-1]), flush=True)
        print(calls(results[-1]), flush=True)
        if saved is not None:
            saved.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    if plot_path is not None:
        plot(results, plot_path)
    return lines(results, plot_path)


def lines(results: list[Result], plot_path: Path | None) -> list[str]:
    out = [
        HEADING,
        "",
        "`bench/controller_scale.py` (run by `make bench`): N ModelRollouts created at once in the API "
        "stand-in (tests/kube_standin.py, over real HTTP, in a process of its own), each with its own VirtualService; "
        f"`mesh-canary controller` in its own process (default `--workers`); one real Prometheus scraping every "
        f"{SCRAPE_S:.0f} s a synthetic exporter whose Istio-profile counters and latency buckets follow each "
        f"VirtualService's current weights at {RATE:.0f} requests/s per service; analysis interval "
        f"{INTERVAL_S:.0f} s, steps 10/50/100 of at least 20 s; every {BAD_EVERY}th candidate answers "
        f"{ERRORS['bad']:.0%} errors and is rolled back. The 'slow' row: {SLOW_SHARE:.0%} of the rollouts name a "
        "Prometheus address that accepts connections and never answers (they end rolled back on noData; the "
        "lateness histogram counts their analyses too).",
        "",
        "Tick lateness: the controller's `mesh_canary_tick_lateness_seconds` histogram (wall time when an "
        "analysis's turn starts minus when it was due), every analysis of every rollout (in the slow row, the "
        "slow rollouts' too); p50 / p99 / max are the upper bounds of the histogram buckets that hold them "
        "(buckets 5 ms ... 60 s), the mean is its sum / count. (Earlier tables took `lastTickAt` from the "
        "statuses: with analyses on the grid of the interval that is the grid instant read at, not when the "
        "analysis ran, so it showed no lateness.) "
        "Rollback: from the instant the analysis that failed read at (its due grid instant, so its lateness "
        "is included) to the commit of the 100%-stable VirtualService write. Peak threads: the controller's "
        "`Threads` in /proc, sampled every second. Prometheus queries: Prometheus's own `prometheus_http_requests_total` "
        "(slow rollouts' queries never reach it); per analysis: over the controller's `mesh_canary_ticks_total`. "
        "API requests by verb per second, counted by the stand-in from the controller's start (creating the "
        "resources not counted). CPU and peak RSS (VmHWM) of the controller process from /proc.",
        "",
        "| rollouts | slow | finished | wall s | tick lateness p50 / p99 / max ms (analyses) | failed check to stable write p50 / p99 ms (rollbacks) | Prometheus queries/s | queries per analysis | API requests/s by verb | controller CPU s | peak RSS MiB | peak threads | load |",
        "| ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
        *(row(r) for r in results),
        "",
    ]
    if plot_path is not None:
        out += [f"![controller at scale]({plot_path.name})", ""]
    plain = {r.n: r for r in results if not r.slow and r.workers is None}
    for r in results:
        if r.slow and r.n in plain:
            out += [
                f"Head-of-line blocking at N = {r.n:,}: with {r.slow} rollouts behind a stalled Prometheus, the "
                f"tick lateness (every rollout's, the slow ones' included) p50 / p99 / max was <= {_ms(r.late_s[0])} / {_ms(r.late_s[1])} / "
                f"{_ms(r.late_s[2])} ms (mean {_ms(r.late_mean_s)}), against <= {_ms(plain[r.n].late_s[0])} / "
                f"{_ms(plain[r.n].late_s[1])} / {_ms(plain[r.n].late_s[2])} ms (mean {_ms(plain[r.n].late_mean_s)}) "
                "without. A stalled read holds its thread for `metrics.timeout` "
                "(10 s) at every interval; after `--slow-after` it stops holding a worker, but threads in all are "
                "capped by `--max-workers` (default 16): past 12 stalled rollouts the others get fewer than "
                "`--workers` threads, and 16 stalled ones hold every thread and stop every other rollout, "
                "rollbacks included (docs/controller.md, Sizing the worker pool).",
                "",
            ]
    big = plain.get(1000)
    if big is not None:
        met = {True: "**met**", False: "**missed**"}
        small = plain.get(100)
        flat = small is not None and big.queries_per_tick <= small.queries_per_tick * 1.5
        out += [
            f"Goals at N = 1,000, interval {INTERVAL_S:.0f} s (default `--workers`): tick lateness p99 < 1 s "
            f"{met[big.late_s[1] < 1]} (<= {_ms(big.late_s[1])} ms); failed check to stable write p99 < 2 s "
            f"{met[big.rollback_s[1] < 2]} ({_ms(big.rollback_s[1])} ms, the failing analysis's lateness "
            "included; an analysis reads at the instant it announced only while at most one interval late, "
            "later at the last grid instant, so its data is never staler than an on-time analysis's); "
            f"queries per analysis independent of N {met[flat]} ({big.queries_per_tick:.2f} at "
            f"1,000 against {small.queries_per_tick if small else math.nan:.2f} at 100); peak "
            f"RSS < 500 MB {met[big.peak_rss_mib * 2**20 < 500e6]} ({big.peak_rss_mib:,.0f} MiB).",
            "",
            f"API requests per analysis at N = 1,000 (the stand-in's count over the analyses): {calls(big).split(': ', 2)[2]}.",
            "",
        ]
    out += [
        "**Provisional**: measured on a 2-core machine that may be shared with other jobs; the stand-in, the "
        "exporter and Prometheus run on the same two cores as the controller. The `load` column is the highest "
        "1-minute load average sampled every second during each run (the benchmark's own processes included).",
        "",
        "What limits N (profiled by hand with py-spy and /proc during the runs of 2 December 2026, not by "
        "this script):",
        "",
        "- **Fixed (2 December 2026, second session)**: one Prometheus client per Prometheus per process "
        "instead of one per rollout, its TLS context made only for https (a context with the CA bundle was "
        "~0.8 MiB and ~45 ms of CPU per rollout); notifier threads only while a receiver has announcements "
        "queued (was two threads per rollout); the first turns of new rollouts on workers of their own "
        "(`max(1, --workers / 2)`), so analyses and rollbacks no longer wait behind a start burst. Before: "
        "N = 1,000 did not finish in 15 minutes (~2,000 threads, 1,163 MiB peak RSS, 221 rollbacks against 50 "
        "bad candidates, analyses late by 365 s on average). After: it finished in the time in the table, with "
        "~17 threads, 330 MiB peak RSS and exactly the 50 bad candidates rolled back.",
        "- **Fixed (2 December 2026, third session)**: the stand-in runs in a process of its own (it "
        "shared the benchmark's interpreter); its watch streams start from their cursor (a bisect) instead of "
        "scanning every write so far for each watcher at each write; an analysis that moves no weight looks "
        "at its VirtualService in the controller's watch cache instead of a GET, and weight writes start from "
        "the cached copy (a PUT carrying its resourceVersion, no GET before it; a 409 re-reads); an analysis "
        "that runs late reads at the grid instant it announced, so it takes its part of that instant's shared "
        "query. Before (N = 1,000, the stand-in already in its own process, load up to 10.0): 8.8 API "
        "requests per analysis (VirtualService GETs 2.44, status patches 1.36, VirtualService replaces 1.78, "
        "ModelRollout GETs 1.44, Events 1.06, finalizer patches 0.72), 1.16 queries per analysis, lateness "
        "mean 12.8 s, p99 <= 60 s, rollback p99 11.2 s, 523 s to finish.",
        "- **Fixed (2 December 2026, fourth session)**: a rollout's start reads its ModelRollout once "
        "(the runner resumes from the reconciler's read instead of a second GET); the finalizer is added "
        "and removed starting from the answer to our last status write (its resourceVersion; a 409 reads "
        "afresh) instead of a GET before each patch; a policy document is checked once, not at every "
        "turn (8.9% of the controller's CPU at N = 1,000); request bodies that are plain JSON skip the "
        "official client's walk in Python (`sanitize_for_serialization`, the largest single CPU cost "
        "left: `kube/rollouts.py` `json_api_client`); the rollouts and in-flight gauges are refreshed "
        "when /metrics is read instead of after every turn (a walk of every rollout under the work "
        "queue's lock at each turn), and a turn copies its resource outside that lock (workers spent "
        "~20% of their wall time waiting for it); an "
        "analysis more than an interval late announces every other rollout as late as it at the grid "
        "instant they will all read, so the first sends one shared query for them. Before (the same "
        "machine idle, main at the session's start, two runs, load 2.2-2.4): 5.96 API requests per "
        "analysis (Events 0.93, ModelRollout GETs 1.26, VirtualService GETs 0.26, finalizer patches "
        "0.63, status patches 1.32, VirtualService replaces 1.56), 0.65-0.79 queries per analysis, "
        "lateness mean 8.6-8.9 s (p99 <= 30 s), rollback p99 9.8-10.0 s, 87-113 s to finish, 20-21 ms of "
        "controller CPU per analysis. After (the table): 4.33 requests per analysis (a whole rollout "
        "reads its ModelRollout once: 4.0 GETs before), 0.38 queries per analysis, lateness mean 6.5 s, "
        "83 s to finish, 15 ms of CPU per analysis (-27%).",
        "- **Now: CPU, on two cores shared with the API stand-in.** The controller used 0.7 of a core "
        "and the stand-in (Python, asyncio, every write validated against the CRD's schema) about as "
        "much, with Prometheus and the exporter on the same 2 cores; worker threads spent about half "
        "their wall time waiting for the stand-in's answers. Demand at N = 1,000 and a 10 s interval is "
        "100 analyses a second plus the start burst; this machine turned over ~58 turns a second (3,820 "
        "analyses and 1,000 starts in 83 s), so analyses run late until the burst is worked off, and the "
        "failing analysis's lateness is most of the rollback time. Per rollout (3 steps, ~4 analyses) "
        "the API requests left are: 1 ModelRollout GET, ~1 VirtualService GET (before the watch cache "
        "holds it), 5 VirtualService replaces (ownership claimed, three steps, released), one status "
        "patch per analysis plus one, 2 finalizer patches and ~3 Events. Not in this benchmark: a "
        "rollout's status grows with its audit record (up to 300 entries) and timeline (up to 120 "
        "points), to ~100-200 kB for a long rollout with many checks, and every status write's answer "
        "and watch event carries it; with rollouts of hours, that, not the request count, would set the "
        "cost per analysis. The sizing rule in docs/controller.md holds: `--workers` >= rollouts / "
        "interval x reconcile time, or shard. Whether a real API server on its own cores serves 100 "
        "turns a second to one controller was not measured.",
        "- **The API stand-in itself** was the first limit: kmock kept every request and matched each new one "
        "against all before it (190 ms per status patch after 300 requests); the stand-in now forgets them in "
        "benchmarks (`KubeStandIn(keep_requests=False)`: ~7 ms).",
        "",
    ]
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["exporter"]:
        exporter_main(argv[1], int(argv[2]), [x for x in argv[3].split(",") if x])
        return
    if argv[:1] == ["standin"]:
        standin_main(argv[1], argv[2], argv[3])
        return
    if argv[:1] == ["stall"]:
        stall_main(int(argv[1]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 10 and 100 only")
    parser.add_argument("--sizes", help="comma-separated N (default 10,100,1000)")
    parser.add_argument("--slow-n", type=int, help="N of the run with slow rollouts (default: 100; 0: none)")
    parser.add_argument("--workers", type=int, help="the controller's --workers (default: its default)")
    parser.add_argument("--saved", type=Path, help="a JSON file of results: those in it are not run again")
    parser.add_argument(
        "--update", type=Path, help="replace this section of a markdown file (and write the plot)"
    )
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    out = section(args.quick, sizes, PLOT if args.update else None, args.slow_n, args.saved, args.workers)
    print("\n".join(out))
    if args.update:
        update(args.update, out, HEADING)


if __name__ == "__main__":
    main()
