"""The log: every announcement, as a log record (warnings for rollbacks and other trouble)."""

from __future__ import annotations

import logging

from mesh_canary.notify.base import log
from mesh_canary.protocols import Announcement


class LogNotifier:
    def notify(self, announcement: Announcement) -> None:
        level = logging.WARNING if announcement.severity == "warning" else logging.INFO
        log.log(
            level, announcement.message, extra={"rollout": announcement.rollout, "event": announcement.kind}
        )
