"""Stopping child processes: a SIGTERM first, so that each leaves its consumer groups and closes its
stores, then a SIGKILL for those that do not stop in time."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any


def stop_processes(
    processes: Sequence[subprocess.Popen[Any]], grace_s: float = 30
) -> list[subprocess.Popen[Any]]:
    """SIGTERM every process still running, then SIGKILL whichever has not exited `grace_s` after (each
    waited for in turn); returns the processes it killed."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    killed = []
    for process in processes:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            killed.append(process)
    return killed
