"""CPU sampling from /proc (Linux): a process's CPU time, the machine's, and the others' share.

The benchmark machine is shared: every wall-clock number is read beside how busy everything else was.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path


def cpu_seconds(*pids: int) -> float:
    """User + system CPU seconds of processes so far, all their threads, summed."""
    ticks = 0
    for pid in pids:
        # the fields after the command's closing parenthesis, from the 3rd on (state, ...)
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it that runs now (parents read from /proc/*/stat).

    A server that spreads its work over child processes (MLServer's parallel inference workers) is
    measured as a whole: its CPU is the sum of `cpu_seconds` over the tree.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, waiting = [], [pid]
    while waiting:
        member = waiting.pop()
        tree.append(member)
        waiting += children.get(member, [])
    return tree


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(
    *pids: int, timeout_s: float = 120, window_s: float = 1.0, cores: float = 0.2, step_s: float = 0.1
) -> float:
    """Seconds until the processes together used less than `cores` of CPU over `window_s`: until the
    start of that idle window (inf on timeout). The window slides by `step_s`, so that start is found
    to within `step_s`: back to back windows put it on whole seconds, ~30 % of a 30,000-request backlog
    that a bare loop answers in 2 s.

    A worker may still be busy after its last prediction (its other agents, e.g. the join, work on
    what the predictions caused): a phase that starts before it is idle measures that work too.
    """
    began = time.perf_counter()
    samples: deque[tuple[float, float]] = deque()  # (seconds since began, CPU seconds), one per step
    while True:
        now = time.perf_counter() - began
        samples.append((now, cpu_seconds(*pids)))
        while len(samples) > 1 and now - samples[1][0] >= window_s:
            samples.popleft()  # the newest sample at least a window back stays first
        start, cpu = samples[0]
        if now - start >= window_s and (samples[-1][1] - cpu) / (now - start) < cores:
            return start
        if now >= timeout_s:
            return float("inf")
        time.sleep(step_s)


def wait_idle_again(*pids: int, timeout_s: float, **window: float) -> tuple[float, float]:
    """`wait_idle(*pids, timeout_s=timeout_s, **window)` after a phase: the seconds the processes stayed
    busy, and the epoch ms where their idle window began (on a timeout, still busy: the last second
    before now, a bound)."""
    waited_at = time.time()
    busy_after_s = wait_idle(*pids, timeout_s=timeout_s, **window)
    if busy_after_s == float("inf"):
        return busy_after_s, time.time() * 1000 - 1000
    return busy_after_s, (waited_at + busy_after_s) * 1000


def thread_cpu_seconds(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each thread of a process so far: thread id -> (name, seconds).

    The name is the kernel's (`comm`) with digits dropped: `rdk:broker-` for every librdkafka broker
    thread, `python` for every thread Python started (3.11 does not name them), `main` for the main
    thread (the event loop of an asyncio program).
    """
    threads: dict[int, tuple[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        tid = int(task.name)
        name = "main" if tid == pid else comm.rstrip("0123456789")
        threads[tid] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    return threads


def thread_cpu_since(pid: int, before: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each group of same-named threads used since `thread_cpu_seconds` returned `before`
    (threads started meanwhile count from zero; those that ended meanwhile are missing)."""
    used: dict[str, float] = {}
    for tid, (name, seconds) in thread_cpu_seconds(pid).items():
        used[name] = used.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return dict(sorted(used.items(), key=lambda item: -item[1]))


class PhaseCpu:
    """A process's CPU over a phase, from construction on: per thread group once the phase's work is
    done (`threads`, of `pid` alone), then in all until the process is idle again (`until_idle`); with
    `more`, those processes too (e.g. a worker's join processes, see `process_tree`), counted together."""

    def __init__(self, pid: int, *more: int) -> None:
        self.pid = pid
        self.pids = (pid, *more)
        self._cpu_start = cpu_seconds(*self.pids)
        self._threads_before = thread_cpu_seconds(pid)

    def threads(self) -> dict[str, float]:
        """CPU seconds of each group of same-named threads since the phase began (`thread_cpu_since`)."""
        return thread_cpu_since(self.pid, self._threads_before)

    def until_idle(self, timeout_s: float) -> tuple[float, float, float]:
        """Wait until the process is idle again (`wait_idle_again`): the seconds it stayed busy, the epoch
        ms its idle window began, and its CPU seconds since the phase began."""
        busy_after_s, idle_at_ms = wait_idle_again(*self.pids, timeout_s=timeout_s)
        return busy_after_s, idle_at_ms, cpu_seconds(*self.pids) - self._cpu_start


class CpuUsage:
    """CPU used from construction to `report()`: the process, this one, the machine, the others.

    `others_cores` is what every other process took meanwhile (Kafka and Redis included), the first
    thing to look at when a wall-clock number looks odd. The agent is `pid`, and with `more` those
    processes too (e.g. a server's inference workers, see `process_tree`), counted together.
    """

    def __init__(self, pid: int, *more: int) -> None:
        self.pid = pid
        self.pids = (pid, *more)
        self.began = time.perf_counter()
        self.agent = self._agent_seconds()
        self.bench = sum(os.times()[:2])
        self.machine = machine_busy_seconds()

    def report(self) -> dict[str, float]:
        seconds = time.perf_counter() - self.began
        agent = self._agent_seconds() - self.agent
        bench = sum(os.times()[:2]) - self.bench
        machine = machine_busy_seconds() - self.machine
        return {
            "seconds": seconds,
            "agent_cpu_s": agent,
            "agent_cores": agent / seconds,
            "bench_cores": bench / seconds,
            "machine_cores": machine / seconds,
            "others_cores": max(0.0, machine - agent - bench) / seconds,
            "load_average_1m_after": os.getloadavg()[0],
        }

    def _agent_seconds(self) -> float:
        return cpu_seconds(*self.pids)


class CpuSampler:
    """Samples, every `period_s` in a thread, the machine's busy CPU seconds and those of the worker
    and of this process, so that the load of everything else (neighbours, Kafka, Redis) can be
    reported for any time window of a run."""

    def __init__(self, worker_pid: int, period_s: float = 0.25) -> None:
        self.worker_pid = worker_pid
        self.period_s = period_s
        self.samples: list[tuple[float, float, float, float]] = []  # epoch s, machine, worker, bench
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> CpuSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(
                    (
                        time.time(),
                        machine_busy_seconds(),
                        cpu_seconds(self.worker_pid),
                        cpu_seconds(os.getpid()),
                    )
                )
            except (OSError, ValueError, IndexError):  # the worker is gone
                return
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def cores(self, start_s: float, end_s: float) -> dict[str, float]:
        """Average cores busy between two epoch times: machine, worker, this process, everything else."""
        inside = [sample for sample in self.samples if start_s <= sample[0] <= end_s]
        if len(inside) < 2:
            return {}
        (t0, m0, w0, b0), (t1, m1, w1, b1) = inside[0], inside[-1]
        span = t1 - t0
        machine_cores, worker, bench = (m1 - m0) / span, (w1 - w0) / span, (b1 - b0) / span
        return {
            "machine": machine_cores,
            "worker": worker,
            "bench_process": bench,
            "others": machine_cores - worker - bench,
        }
