"""The join in child processes of the worker (`RIG_JOIN_PROCESSES`): partition-parallel, a GIL each.

The join is most of a worker's CPU per request (decoding predictions and outcomes, its RocksDB
stores, joined rows and changelog records), and one process runs its Python one thread at a time, its
predict path and promoter included. Children that run only the join (role `join`) share its
partitions through its consumer group, like workers of their own, and leave the worker's GIL to
predictions and the promoter.

A child is a `python -m streams` with the worker's settings but for: role `join`, its web server
(`/metrics`, `/join/counts/`, `/healthz`) on the worker's port + 1 + its index (none when the worker
has none); like every process that joins, it keeps its stores in a folder of its own
(`rig.feedback.store_folder`), and `streams.worker` imports no other role's modules for it (no XGBoost,
Feast, pandas or scipy: less than half the memory of a whole worker) and creates no topic for it (the
worker did, before starting it; a child that did so too re-created a topic an operator had deleted
since). It dies with the worker
(`PR_SET_PDEATHSIG`, Linux) and runs only on idle cores (`become_join_process`); the worker exits when
a child does (its health watch: `failure`), so that its supervisor restarts the whole, as it would a
worker whose join died.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import faust

from rig.config import RigSettings
from rig.processes import stop_processes
from streams.metrics import scrape_join_processes

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_TIMEOUT_S = 30.0
"""How long stopping children may take (each leaves its consumer group) before they are killed."""
ORPHAN_CHECK_S = 1.0
"""How often a join process checks that its worker still runs (`exit_when_orphaned`)."""
PARENT_ENV = "RIG_JOIN_PROCESS_PARENT"
"""Set in a child's environment to the worker's pid: the child dies with it."""


class JoinProcesses:
    """The worker's join processes: started, watched, stopped."""

    def __init__(self, settings: RigSettings) -> None:
        self.settings = settings
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def start(self) -> None:
        """Start `settings.join_processes` children (their output goes to the worker's)."""
        for index in range(self.settings.join_processes):
            child = subprocess.Popen([sys.executable, "-m", "streams"], env=self.environment(index))
            self.children.append(child)
            log.info("join process %d started pid=%d", index, child.pid)

    def environment(self, index: int) -> dict[str, str]:
        """The environment of child `index`: the worker's, with the settings that make it a join process.
        With static membership each child has an instance id of its own: sharing the worker's, the
        children would fence each other out of the join's group (FENCED_INSTANCE_ID, fatal)."""
        own: dict[str, str] = {}
        if self.settings.kafka_group_instance_id:
            own["RIG_KAFKA_GROUP_INSTANCE_ID"] = f"{self.settings.kafka_group_instance_id}-join-{index}"
        return {
            **os.environ,
            "RIG_WORKER_ROLES": '["join"]',
            "RIG_JOIN_PROCESSES": "0",
            "RIG_WEB_PORT": str(self.port(index)),
            PARENT_ENV: str(os.getpid()),
            **own,
        }

    def port(self, index: int) -> int:
        """The web port of child `index`: the worker's + 1 + index (0, none, when the worker has none)."""
        return self.settings.web_port + 1 + index if self.settings.web_port else 0

    def urls(self, path: str) -> list[str]:
        """The page `path` of each child (e.g. `/metrics`, for the worker's; none without a web server)."""
        if not self.settings.web_port:
            return []
        bind = self.settings.web_bind
        host = "127.0.0.1" if bind in ("", "0.0.0.0", "::") else f"[{bind}]" if ":" in bind else bind
        return [f"http://{host}:{self.port(i)}{path}" for i in range(self.settings.join_processes)]

    def failure(self) -> str | None:
        """What happened to the first child that exited, or None while every one runs (or `stop` ends
        them: the worker is stopping, not failing)."""
        if self.stopping:
            return None
        for index, child in enumerate(self.children):
            code = child.poll()
            if code is not None:
                return f"join process {index} (pid {child.pid}) exited with {code}"
        return None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the children (SIGTERM: each leaves its group and closes its stores), killing those that
        do not stop within `timeout_s`."""
        self.stopping = True
        for child in stop_processes(self.children, timeout_s):
            index = self.children.index(child)
            log.warning(
                "join process %d (pid %d) did not stop in %.0f s: killed", index, child.pid, timeout_s
            )


def install_counts_page(app: faust.App, urls: Sequence[str], token: str | None) -> None:
    """Serve `/join/counts/` on a worker whose join runs in its children (`urls`: their own pages): the
    sum of their counts, what the worker would count joining itself. 503 naming the children that did
    not answer (in `JOIN_PROCESS_SCRAPE_S`, with `token`): a partial sum would undercount."""

    @app.page("/join/counts/")
    async def join_counts(web: Any, request: Any) -> Any:
        """The join counters (joined, late, orphans, duplicates, ...) of every join process, summed."""
        total: Counter[str] = Counter()
        silent = []
        for index, text in enumerate(await scrape_join_processes(urls, token)):
            try:
                total.update(json.loads(text or ""))
            except (ValueError, TypeError):  # no answer, or not a join's counts
                silent.append(index)
        if silent:
            return web.json({"error": f"join processes {silent} did not answer"}, status=503)
        return web.json(dict(total))


def become_join_process(orphan_grace_s: float = STOP_TIMEOUT_S) -> bool:
    """In a join process: ask the kernel for a SIGTERM when the worker that started it ends (exit now if
    it ended already, before the request), exit at once if it has not stopped `orphan_grace_s` after
    that (`exit_when_orphaned`), and run only on cores nothing else wants. Returns whether this process
    is a worker's join process (False: nothing was done)."""
    parent = os.environ.get(PARENT_ENV)
    if parent is None:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning(
            "PR_SET_PDEATHSIG refused (errno %d): this join process may outlive its worker",
            ctypes.get_errno(),
        )
    if os.getppid() != int(parent):
        raise SystemExit(f"the worker that started this join process (pid {parent}) is gone")
    threading.Thread(
        target=exit_when_orphaned, args=(int(parent), orphan_grace_s), name="orphan-watch", daemon=True
    ).start()
    # Predictions first, as within one process (`streams.plane.priority`): across processes the kernel
    # gives way, running the join only on cores nothing else wants (SCHED_IDLE; a task waking up
    # preempts it at once). A backlog's predictions went at a median 15,656 req/s so (4 runs), against
    # 10,700 at niceness +10 (3) and 14,800 with the join in the worker (5; bench/bench_feedback.py).
    for thread in os.listdir("/proc/self/task"):  # those started on import (librdkafka's); later ones inherit
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.sched_setscheduler(int(thread), os.SCHED_IDLE, os.sched_param(0))
    return True


def exit_when_orphaned(worker: int, grace_s: float) -> None:
    """Exit the process (`os._exit`) once `worker` has ended and `grace_s` more have passed: the
    SIGTERM that its end sends stops a join process well before, unless its stop hangs (seen once in
    the fault tests: an exactly-once sink's thread retrying a producer queue that stayed full, which
    the interpreter's exit waited for, 18 minutes and counting). No worker is left to kill it, and it
    would keep its store folder, memory and a thread polling for good."""
    while os.getppid() == worker:
        time.sleep(ORPHAN_CHECK_S)
    time.sleep(grace_s)
    log.critical(
        "the worker (pid %d) ended %.0f s ago and this join process has not stopped: exiting", worker, grace_s
    )
    os._exit(1)
