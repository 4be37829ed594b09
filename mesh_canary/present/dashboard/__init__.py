"""`mesh-canary dashboard`: a live web view of rollouts (see docs/dashboard.md).

It reads the same state the CLI reads (`run --state` files, or ModelRollouts and their
Events), shows the report's page for each rollout, kept up to date while it runs, and gives
pause/resume/approve/abort orders only when started with ``--allow-writes``.
"""

from __future__ import annotations

from mesh_canary.present.dashboard.server import Dashboard, DashboardServer, serve
from mesh_canary.present.dashboard.sources import Entry, Poller, Snapshot, Source

__all__ = [
    "Dashboard",
    "DashboardServer",
    "Entry",
    "Poller",
    "Snapshot",
    "Source",
    "serve",
]
