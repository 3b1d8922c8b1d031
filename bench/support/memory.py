"""Memory and disk from /proc and the file system (Linux): a process's resident set, now and at its
peak, sampled over a run, and the bytes a folder holds on disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


def status_kib(pid: int | str, field: str) -> int:
    """A `kB` field of /proc/<pid>/status (e.g. `VmRSS`, `VmHWM`), in KiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size of a process now (VmRSS), MiB (0 when it is gone)."""
    return status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int | str = "self") -> float:
    """Highest resident set size of a process so far (VmHWM), MiB (0 when it is gone)."""
    return status_kib(pid, "VmHWM") / 1024


def disk_mib(folder: Path) -> float:
    """Bytes of every file under `folder` (files removed meanwhile are skipped), MiB."""
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total / 2**20


class RssSampler:
    """Samples, every `period_s` in a thread, the resident set of the processes `pids()` names (they
    may change: a replacement worker), keeping each one's peak and the samples (epoch s, pid, MiB)."""

    def __init__(self, pids: Callable[[], dict[str, int]], period_s: float = 2.0) -> None:
        self.pids = pids
        self.period_s = period_s
        self.samples: list[tuple[float, str, int, float]] = []  # epoch s, name, pid, MiB
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        """One sample of every named process (also called by the thread)."""
        now = time.time()
        for name, pid in self.pids().items():
            mib = max(rss_mib(pid), peak_rss_mib(pid))  # VmHWM catches peaks between two samples
            if mib <= 0:
                continue
            self.samples.append((now, name, pid, rss_mib(pid)))
            self.peak_mib[name] = max(self.peak_mib.get(name, 0.0), mib)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
