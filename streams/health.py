"""`/healthz`, `/readyz`, and the exit of a worker that stalls with nothing to wait for."""

from __future__ import annotations

import logging
import os
from typing import Any

import faust

from rig.config import RigSettings
from streams.plane.health import Health
from streams.plane.source import BatchSource
from streams.timers import supervised

log = logging.getLogger(__name__)

STALL_EXIT_CODE = 75
"""Exit code of a worker that stalled with nothing to wait for (or lost its consuming thread)."""


def install_health(app: faust.App, settings: RigSettings, health: Health, source: BatchSource | None) -> None:
    """Add the health endpoints and the stall watch to `app`."""

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        """200 while the event loop answers."""
        return web.json({"alive": True})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        """200 when the worker answers requests now; 503 with every reason it does not."""
        readiness = health.readiness()
        body = {"ready": readiness.ready, "reasons": list(readiness.reasons)}
        return web.json(body, status=200 if readiness.ready else 503)

    @app.timer(interval=5.0)
    @supervised
    async def watch_stalls() -> None:
        """Exit (for a supervisor to restart the worker) when its consuming thread died, or when its
        partitions stalled for `stall_exit_s` while it waited for no dependency."""
        if source is not None and source.crashed is not None:
            log.critical("the requests source stopped (%r); exiting for a restart", source.crashed)
            os._exit(STALL_EXIT_CODE)
        stalled_s = health.unexplained_stall_s()
        if stalled_s >= settings.stall_exit_s:
            log.critical(
                "partitions stalled for %.0f s with no dependency away; exiting for a restart: %s",
                stalled_s,
                "; ".join(health.readiness().reasons),
            )
            os._exit(STALL_EXIT_CODE)
