"""The dashboard's web server (stdlib http.server, one thread per request): the list of
rollouts, one rollout's page (the report's page, kept up to date by polling its content
once a second), JSON for scripts, and the orders (only with ``--allow-writes``).

Routes:
  GET  /                         the list of rollouts (live)
  GET  /fragment                 the list's content, for the live update
  GET  /r/<key>                  one rollout's page (live)
  GET  /r/<key>/fragment         its content (ETag: 304 when unchanged)
  GET  /api/rollouts             every rollout as JSON (the one rollout view)
  GET  /api/r/<key>              one rollout: its view and its state
  POST /api/r/<key>/<verb>       pause | resume | approve | abort: 403 without --allow-writes
  GET  /healthz                  ok

Nothing is loaded from elsewhere (no CDN): the style and the one small script are inline.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

from mesh_canary.core.engine import RolloutState
from mesh_canary.present import numbers
from mesh_canary.present.dashboard.sources import Entry, Poller, Snapshot
from mesh_canary.present.report import ReportError, render_main, render_page, state_page
from mesh_canary.present.report.style import CSS
from mesh_canary.present.view import RolloutView, json_safe, status_message
from mesh_canary.redact import redact

log = logging.getLogger(__name__)

# The live update: fetch the content every second, swap it in when it changed (ETag), and
# send the buttons' orders. A custom header on POST keeps other sites' forms out.
SCRIPT = """<script>
(function () {
  var main = document.getElementById('page');
  var live = document.getElementById('live');
  var etag = '';
  function poll() {
    fetch(main.dataset.src, {headers: {'If-None-Match': etag}, cache: 'no-store'}).then(function (r) {
      if (r.status === 200) {
        etag = r.headers.get('ETag') || '';
        return r.text().then(function (t) { main.innerHTML = t; return r; });
      }
      return r;
    }).then(function (r) {
      live.textContent = 'live: ' + (r.headers.get('X-State-Read') || '');
      live.dataset.ok = '1';
    }, function (e) {
      live.textContent = 'live: the dashboard server does not answer (' + e + ')';
      live.dataset.ok = '0';
    }).then(function () { setTimeout(poll, 1000); });
  }
  document.addEventListener('click', function (ev) {
    var b = ev.target.closest && ev.target.closest('button[data-verb]');
    if (!b) { return; }
    var verb = b.dataset.verb;
    if (verb === 'abort' && !confirm('Abort: send 100% of traffic to stable now?')) { return; }
    var out = document.getElementById('order');
    fetch(b.dataset.url, {method: 'POST', headers: {'X-Mesh-Canary': 'order'}}).then(function (r) {
      return r.json().then(function (j) { out.textContent = j.message || j.error || r.statusText; });
    }, function (e) { out.textContent = String(e); });
  });
  poll();
})();
</script>"""

ORDER_HEADER = "X-Mesh-Canary"
# the buttons (`mesh-canary rollout VERB`; promote-full is `rollout promote --full`)
ORDERS = ("pause", "resume", "approve", "abort", "promote-full", "retry")
READ_ONLY = (
    "this dashboard is read-only: start it with --allow-writes (the controller: --dashboard-allow-writes) "
    "to give orders"
)


def _nav(snapshot: Snapshot, here: str = "") -> str:
    back = '<a href="/">all rollouts</a>' if here else "<strong>mesh-canary dashboard</strong>"
    return f'<nav class="top">{back}<span id="live">live: {html.escape(_freshness(snapshot))}</span></nav>'


def _freshness(snapshot: Snapshot) -> str:
    """When the state was last read (and why a read is late), for the live line."""
    read = f"state read {numbers.when(snapshot.read_at)}" if snapshot.read_at else "state not read yet"
    return read + (f" · {snapshot.problem}" if snapshot.problem else "")


def _controls(entry: Entry, allow_writes: bool) -> str:
    if not allow_writes:
        return ""
    if not entry.writable:
        return '<p class="note">This rollout is steered by its own `mesh-canary run` process.</p>'
    url = f"/api/r/{quote(entry.key)}/"
    buttons = "".join(
        f'<button type="button" class="{v}" data-verb="{v}" data-url="{html.escape(url + v)}">{v}</button>'
        for v in ORDERS
    )
    return f'<div class="controls">{buttons}<span id="order" class="note"></span></div>'


def _summary(entry: Entry) -> dict[str, Any]:
    """One row of the list: name, phase, weight, step, message."""
    state = entry.state
    if state is None:
        return {"key": entry.key, "name": entry.name, "source": entry.source, "problem": entry.problem}
    try:
        st = RolloutState.from_dict(dict(state))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return {
            "key": entry.key,
            "name": entry.name,
            "source": entry.source,
            "problem": f"unreadable state: {e}",
        }
    view = RolloutView.from_state(st, entry.policy).to_document()
    return {
        "key": entry.key,
        "name": entry.name,
        "source": entry.source,
        "phase": view["phase"],
        "outcome": view["outcome"],
        "weights": view["weights"],
        "currentStep": view["currentStep"],
        "stepCount": view["stepCount"] if entry.policy else None,
        "message": status_message(st, entry.policy),
        "view": view,
    }


def list_main(snapshot: Snapshot) -> str:
    rows = []
    for e in snapshot.entries:
        s = _summary(e)
        link = f'<a href="/r/{html.escape(quote(e.key))}">{html.escape(e.name)}</a>'
        if "phase" not in s:
            rows.append(
                f"<tr><td>{link}</td><td>{html.escape(e.source)}</td>"
                f'<td colspan="4" class="note">{html.escape(s["problem"])}</td></tr>'
            )
            continue
        w = s["weights"] or {}
        step = f"{s['currentStep']}" + (f" of {s['stepCount']}" if s["stepCount"] else "")
        rows.append(
            f"<tr><td>{link}</td><td>{html.escape(e.source)}</td>"
            f'<td><span class="badge {_phase_class(s)}">{html.escape(str(s["phase"]))}</span></td>'
            f'<td class="n">{w.get("candidate", 0)}%</td><td class="n">{html.escape(step)}</td>'
            f'<td class="why">{html.escape(s["message"])}</td></tr>'
        )
    if not rows:
        body = '<p class="note">No rollouts found yet.</p>'
    else:
        head = "".join(
            f"<th>{h}</th>" for h in ("rollout", "source", "phase", "candidate weight", "step", "now")
        )
        body = f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    return f"<h1>Rollouts</h1>{body}"


def _phase_class(s: Mapping[str, Any]) -> str:
    return {"promoted": "pass", "rolled_back": "fail"}.get(str(s.get("outcome")), "open")


def _document(title: str, nav: str, main: str, src: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{nav}\n"
        f'<main id="page" data-src="{html.escape(src)}">{main}</main>\n{SCRIPT}\n</body>\n</html>\n'
    )


class Dashboard:
    """What the handlers serve, from the poller's latest snapshot."""

    def __init__(self, poller: Poller, allow_writes: bool) -> None:
        self.poller = poller
        self.allow_writes = allow_writes

    def page(self, entry: Entry) -> Any:
        if entry.state is None:
            raise ReportError(entry.problem or "no state yet")
        page = state_page(
            entry.state,
            policy=entry.policy,
            status=entry.status,
            source=entry.source,
        )
        return replace(page, events=entry.events, live=True)

    def rollout_main(self, entry: Entry) -> str:
        try:
            return render_main(self.page(entry), _controls(entry, self.allow_writes))
        except ReportError as e:
            return f'<h1>{html.escape(entry.name)}</h1><p class="note">{html.escape(str(e))}</p>'

    def rollout_document(self, entry: Entry, snapshot: Snapshot) -> str:
        src = f"/r/{quote(entry.key)}/fragment"
        nav = _nav(snapshot, entry.key)
        try:
            page = self.page(entry)
        except ReportError:
            return _document(entry.name, nav, self.rollout_main(entry), src)
        return render_page(
            page, nav=nav, controls=_controls(entry, self.allow_writes), script=SCRIPT, src=src
        )

    def order(self, entry: Entry, verb: str) -> tuple[int, dict[str, Any]]:
        if not self.allow_writes:
            return 403, {"error": READ_ONLY}
        if verb not in ORDERS:
            return 404, {"error": f"no order {verb!r}; orders: {', '.join(ORDERS)}"}
        source = entry.origin
        if source is None:
            return 404, {"error": f"no rollout {entry.key}"}
        try:
            return 200, {"message": source.order(entry, verb)}
        except PermissionError as e:
            return 403, {"error": str(e)}
        except ValueError as e:  # the rollout's phase cannot take this order (kube/orders.refusal)
            return 409, {"error": str(e)}
        except Exception as e:
            return 502, {"error": redact(str(e))}


class Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: str, ctype: str = "text/html; charset=utf-8", etag: str = "") -> None:
        data = body.encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:",
        )
        if etag:
            self.send_header("ETag", etag)
            self.send_header("X-State-Read", self._freshness)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    @property
    def _freshness(self) -> str:
        # A header is ASCII: the problem's words are, the separators need not be.
        return (
            _freshness(self.server.dashboard.poller.snapshot)
            .replace("·", "-")
            .encode("ascii", "replace")
            .decode()
        )

    def _json(self, code: int, doc: Any) -> None:
        self._send(code, json.dumps(json_safe(doc), indent=2, allow_nan=False), "application/json")

    def _fragment(self, body: str) -> None:
        etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("X-State-Read", self._freshness)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(200, body, etag=etag)

    def do_GET(self) -> None:
        dash = self.server.dashboard
        snap = dash.poller.snapshot
        path = unquote(self.path.split("?", 1)[0])
        if path == "/healthz":
            return self._send(200, "ok\n", "text/plain")
        if path in ("/", "/index.html"):
            return self._send(
                200, _document("mesh-canary dashboard", _nav(snap), list_main(snap), "/fragment")
            )
        if path == "/fragment":
            return self._fragment(list_main(snap))
        if path == "/api/rollouts":
            return self._json(
                200,
                {
                    "readAt": snap.read_at,
                    "problem": snap.problem or None,
                    "rollouts": [{k: v for k, v in _summary(e).items()} for e in snap.entries],
                },
            )
        for prefix, kind in (("/api/r/", "api"), ("/r/", "page")):
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                fragment = kind == "page" and rest.endswith("/fragment")
                key = rest[: -len("/fragment")] if fragment else rest
                entry = snap.get(key)
                if entry is None:
                    return self._send(404, f"no rollout {html.escape(key)}\n", "text/plain; charset=utf-8")
                if kind == "api":
                    return self._json(200, {**_summary(entry), "state": entry.state})
                if fragment:
                    return self._fragment(dash.rollout_main(entry))
                return self._send(200, dash.rollout_document(entry, snap))
        self._send(404, "not found\n", "text/plain")

    def do_POST(self) -> None:
        dash = self.server.dashboard
        path = unquote(self.path.split("?", 1)[0])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(min(length, 65536))
        if not path.startswith("/api/r/") or "/" not in path[len("/api/r/") :]:
            return self._json(404, {"error": "not found"})
        key, verb = path[len("/api/r/") :].rsplit("/", 1)
        if not dash.allow_writes:
            return self._json(403, {"error": READ_ONLY})
        if self.headers.get(ORDER_HEADER) != "order":
            return self._json(403, {"error": f"an order needs the header {ORDER_HEADER}: order"})
        entry = dash.poller.snapshot.get(key)
        if entry is None:
            return self._json(404, {"error": f"no rollout {key}"})
        code, doc = dash.order(entry, verb)
        self._json(code, doc)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dashboard: Dashboard) -> None:
        super().__init__(address, Handler)
        self.dashboard = dashboard

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


def serve(server: DashboardServer, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (the poller runs beside it)."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(0.5):
                pass
    finally:
        server.shutdown()
        server.server_close()
        server.dashboard.poller.stop()
