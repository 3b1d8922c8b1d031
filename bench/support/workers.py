"""Worker processes of a run from the outside: free ports for their web servers, their JSON
endpoints, their logs (the last lines, and lines watched for as they are written)."""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on now (for a worker's web server)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(port: int, path: str, timeout_s: float = 10) -> Any:
    """GET http://127.0.0.1:<port><path> as JSON; None when the worker does not answer (or not 200)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a process's log, without Faust's banner and terminal escapes."""
    if not path.is_file():
        return "(no log)"
    kept = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if line.strip() and not line.startswith(("|", "+", "\x1b"))
    ]
    return "\n".join(kept[-lines:])


@contextmanager
def tails_on_error(logs: Iterable[Path]) -> Iterator[None]:
    """On an error inside, print the last lines of each log (`logs` is read then: a live view of a
    dict of logs shows the ones added meanwhile), then let the error go on."""
    try:
        yield
    except BaseException:
        for log in logs:
            print(f"----- {log.name} (last lines)\n{log_tail(log)}", file=sys.stderr)
        raise


class LogWatch:
    """Follows a log file in a thread (every `period_s`), keeping each line that matches `pattern`
    with the wall time (epoch s) it was first seen: when a worker reached a step, seen from outside."""

    def __init__(self, path: Path, pattern: str, period_s: float = 0.05) -> None:
        self.path = path
        self.pattern = re.compile(pattern)
        self.period_s = period_s
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-watch", daemon=True)

    def start(self) -> LogWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        position, partial = 0, ""
        while not self._stop.is_set():
            if self.path.is_file():
                with self.path.open("r", errors="replace") as log:
                    log.seek(position)
                    chunk = log.read()
                    position = log.tell()
                now = time.time()
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                self.seen += [(now, line) for line in lines if self.pattern.search(line)]
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def add_worker_env_argument(parser: argparse.ArgumentParser, who: str = "every rig agent") -> None:
    """`--worker-env RIG_NAME=VALUE` (repeatable): a setting passed to the run's workers."""
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="RIG_NAME=VALUE",
        help=f"setting for {who}, e.g. RIG_BATCH_MAX=200 (repeatable)",
    )


def worker_env(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """The `--worker-env` settings as environment variables (a malformed one is a usage error)."""
    for item in args.worker_env:
        if "=" not in item or not item.startswith("RIG_"):
            parser.error(f"--worker-env takes RIG_NAME=VALUE, got {item!r}")
    return dict(item.split("=", 1) for item in args.worker_env)
