"""Faust timers that survive their own failures."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import wraps

log = logging.getLogger(__name__)


def supervised(timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body whose failure is logged and tried again at the next tick, never ending the worker."""

    @wraps(timer)
    async def run() -> None:
        try:
            await timer()
        except Exception:
            log.exception("timer %s failed; it runs again at its next tick", timer.__name__)

    return run
