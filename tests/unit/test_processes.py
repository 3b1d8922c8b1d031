"""Stopping child processes: SIGTERM, then SIGKILL for those that ignore it."""

from __future__ import annotations

import subprocess
import sys

from rig.processes import stop_processes

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
)


def test_processes_stop_on_sigterm_and_only_those_that_ignore_it_are_killed_and_returned() -> None:
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", IGNORES_SIGTERM], stdout=subprocess.PIPE)
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert stubborn.stdout is not None
    stubborn.stdout.readline()  # its handler is in place

    killed = stop_processes([polite, stubborn, done], grace_s=1)

    assert killed == [stubborn]
    assert [polite.returncode, stubborn.returncode, done.returncode] == [-15, -9, 0]
