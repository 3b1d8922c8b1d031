"""`/healthz`, `/readyz`, and the exit of a worker that stalls with nothing to wait for."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import faust

from rig.config import RigSettings
from streams.plane.health import Health
from streams.plane.service import Plane
from streams.timers import supervised

log = logging.getLogger(__name__)

STALL_EXIT_CODE = 75
"""Exit code of a worker that stalled with nothing to wait for, or lost a thread it needs."""


def install_health(app: faust.App, settings: RigSettings, health: Health, planes: Sequence[Plane]) -> None:
    """Add the health endpoints and the watch over every plane of the worker to `app`: `health` is
    its readiness (answering requests); every plane's source and health are watched, so that a join
    or promoter that stopped does not go unnoticed behind a worker that still answers."""

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
        """Exit (for a supervisor to restart the worker) when a plane's consuming thread died,
        something only a restart mends happened (`Health.add_fatal`), or a plane's partitions stalled
        for `stall_exit_s` while it waited for no dependency."""
        for plane in planes:
            if plane.source.crashed is not None:
                group = plane.source.settings.group_id
                log.critical(
                    "the source of %s stopped (%r); exiting for a restart", group, plane.source.crashed
                )
                os._exit(STALL_EXIT_CODE)
        for watched in [health, *(plane.health for plane in planes if plane.health is not health)]:
            fatal = watched.fatal()
            if fatal:
                log.critical("%s; exiting for a restart", "; ".join(fatal))
                os._exit(STALL_EXIT_CODE)
            stalled_s = watched.unexplained_stall_s()
            if stalled_s >= settings.stall_exit_s:
                log.critical(
                    "partitions stalled for %.0f s with no dependency away; exiting for a restart: %s",
                    stalled_s,
                    "; ".join(watched.readiness().reasons),
                )
                os._exit(STALL_EXIT_CODE)
