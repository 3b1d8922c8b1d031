"""Readiness of a worker: what it waits for, which partitions it holds, which ones stall."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rig.errors import Unavailable

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
LAST_RETRY_S = 5.0
"""The backoff of work waiting for a dependency (`Waiting`): 0.1 s doubling to 5 s."""


@dataclass(frozen=True)
class Readiness:
    """Whether the worker answers requests now, and if not, every reason why."""

    ready: bool
    reasons: tuple[str, ...]


class Health:
    """Shared, thread-safe health state of one worker.

    Parts of the worker report what they wait for (`waiting`/`recovered`, e.g. Redis refusing
    connections, a delivery failing, no golden model routed yet) and the source reports its
    assignment and stalled partitions. A dependency being waited for is not a stall: the worker goes
    on by itself when it comes back. `unexplained_stall_s` says how long partitions have stalled with
    nothing being waited for, which only a restart can mend.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, needs_partitions: bool = True) -> None:
        """`needs_partitions`: the worker is ready only while it holds partitions of its source."""
        self._clock = clock
        self._needs_partitions = needs_partitions
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[str, float]] = {}
        self._assigned = 0
        self._stalled: dict[str, float] = {}
        self._unexplained_since: float | None = None
        self._checks: list[Callable[[], str | None]] = []
        self._fatal: list[Callable[[], str | None]] = []

    def waiting(self, dependency: str, reason: str) -> None:
        """`dependency` is unavailable for `reason`; logged once when the wait starts."""
        with self._lock:
            first = dependency not in self._waiting
            since = self._waiting[dependency][1] if not first else self._clock()
            self._waiting[dependency] = (reason, since)
        if first:
            log.warning("waiting for %s: %s", dependency, reason)

    def recovered(self, dependency: str) -> None:
        """`dependency` answers again."""
        with self._lock:
            entry = self._waiting.pop(dependency, None)
        if entry is not None:
            log.warning("%s is back after %.1f s", dependency, self._clock() - entry[1])

    def forget(self, dependency: str) -> None:
        """Nothing waits for `dependency` any more (the work that did was given up); unlike
        `recovered`, this says nothing about whether it is back. Work that still meets it says so
        again with `waiting`."""
        with self._lock:
            self._waiting.pop(dependency, None)

    def waits(self) -> dict[str, float]:
        """Every dependency waited for now, with the seconds it has been waited for."""
        with self._lock:
            now = self._clock()
            return {dependency: now - since for dependency, (_, since) in self._waiting.items()}

    def waits_for(self, dependency: str) -> bool:
        """Whether `dependency` is being waited for."""
        with self._lock:
            return dependency in self._waiting

    def add_check(self, check: Callable[[], str | None]) -> None:
        """A readiness condition: returns why the worker is not ready, or None."""
        self._checks.append(check)

    def add_fatal(self, check: Callable[[], str | None]) -> None:
        """A condition only a restart mends (e.g. a thread the worker needs has died): returns what
        happened, or None. The worker's health watch exits on it (`streams.health`)."""
        self._fatal.append(check)

    def fatal(self) -> list[str]:
        """What only a restart mends (see `add_fatal`), if anything."""
        return [reason for check in self._fatal if (reason := check()) is not None]

    def assigned(self, count: int) -> None:
        """The number of partitions the worker holds now."""
        with self._lock:
            self._assigned = count

    def stalled(self, partitions: dict[str, float]) -> None:
        """Partitions (by name) with messages waiting and no progress, with seconds since their last."""
        with self._lock:
            self._stalled = dict(partitions)
            if partitions and not self._waiting:
                if self._unexplained_since is None:
                    self._unexplained_since = self._clock()
            else:
                self._unexplained_since = None

    def unexplained_stall_s(self) -> float:
        """Seconds partitions have stalled while nothing was being waited for (0 when none)."""
        with self._lock:
            since = self._unexplained_since
        return 0.0 if since is None else self._clock() - since

    def readiness(self) -> Readiness:
        """Ready when no dependency is waited for, partitions are held, none stalls, every check passes
        and nothing fatal happened."""
        reasons: list[str] = []
        with self._lock:
            now = self._clock()
            reasons += [
                f"waiting for {d} for {now - since:.0f} s: {r}" for d, (r, since) in self._waiting.items()
            ]
            if self._needs_partitions and self._assigned == 0:
                reasons.append("no partitions assigned")
            reasons += [f"partition {tp} stalled for {s:.0f} s" for tp, s in sorted(self._stalled.items())]
        reasons += [reason for check in self._checks if (reason := check()) is not None]
        reasons += self.fatal()
        return Readiness(ready=not reasons, reasons=tuple(reasons))


class Waiting:
    """The waits of one piece of work (a batch, a partition's preparation) for dependencies that are
    away: each is named in `health` while it lasts, and tried again after a backoff."""

    def __init__(self, health: Health) -> None:
        self._health = health
        self._delay_s = FIRST_RETRY_S
        self._dependencies: set[str] = set()

    def away(self, error: Unavailable, reason: str | None = None) -> float:
        """`error`'s dependency is away (named in health with `reason`, by default the error's
        message); returns how long to wait before the next try."""
        self._health.waiting(error.dependency, str(error) if reason is None else reason)
        self._dependencies.add(error.dependency)
        delay_s, self._delay_s = self._delay_s, min(LAST_RETRY_S, self._delay_s * 2)
        return delay_s

    def done(self) -> None:
        """The work went through: what it waited for is back."""
        for dependency in self._dependencies:
            self._health.recovered(dependency)

    def given_up(self) -> None:
        """The work was given up: nobody carries on its waits (a wait left would keep readiness off and
        explain every later stall, so that a stalled worker never exits for a restart)."""
        for dependency in self._dependencies:
            self._health.forget(dependency)
