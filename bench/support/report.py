"""Reporting: progress lines, latency percentiles, facts about the machine and the code measured, JSON
in bench/results/."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench" / "results"
PACKAGES = (
    "faust-streaming",
    "aiokafka",
    "confluent-kafka",
    "feast",
    "redis",
    "xgboost",
    "xgboost-cpu",
    "fastavro",
    "numpy",
)
_STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line on stderr: wall-clock time and seconds since the benchmark started."""
    elapsed = time.perf_counter() - _STARTED
    print(f"[{time.strftime('%H:%M:%S')} {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def latency_percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, mean and max of latencies in send order, and the p50 of their first and last
    tenths: a p50 growing from the first to the last tenth means the agent fell behind the rate."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    if values.size == 0:
        return dict.fromkeys(
            ("p50", "p90", "p99", "mean", "max", "p50_first_tenth", "p50_last_tenth"), np.nan
        )
    tenth = max(1, values.size // 10)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
        "max": float(values.max()),
        "p50_first_tenth": float(np.median(values[:tenth])),
        "p50_last_tenth": float(np.median(values[-tenth:])),
    }


def machine_info() -> dict[str, Any]:
    """CPUs, platform, Python, and the versions of the packages that matter."""

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: v for name in PACKAGES if (v := version(name)) is not None},
    }
    try:
        import confluent_kafka

        info["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return info


def code_revision() -> dict[str, Any]:
    """The commit measured, and the files under rig/, streams/, sim/ and bench/ that differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        dirty = git("status", "--porcelain", "--", "rig", "streams", "sim", "bench").splitlines()
        return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted": [line.strip() for line in dirty]}
    except (OSError, subprocess.CalledProcessError) as error:
        return {"error": str(error)}


@dataclass
class RunRecord:
    """Started with a benchmark: what its report says about the run (machine, code, command, time)."""

    began: float = field(default_factory=time.perf_counter)
    load_average_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    code: dict[str, Any] = field(default_factory=code_revision)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def result(self, benchmark: str, args: Any, **parts: Any) -> dict[str, Any]:
        """A benchmark's report: its name, its options (`args`), its `parts`, then `fields()`."""
        return {
            "benchmark": benchmark,
            "config": {**vars(args), "output": str(args.output)},
            **parts,
            **self.fields(),
        }

    def fields(self) -> dict[str, Any]:
        """`machine` (with the load average at start and end), `code`, `command` and `seconds`."""
        return {
            "machine": {
                **machine_info(),
                "load_average_start": self.load_average_start,
                "load_average_end": os.getloadavg(),
            },
            "code": self.code,
            "command": " ".join([sys.executable, *sys.argv]),
            "seconds": self.seconds,
        }


def plain(value: Any) -> Any:
    """`value` as strict JSON: numpy scalars and arrays as numbers and lists, NaN and infinity as null."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(path: Path, report: dict[str, Any]) -> None:
    """Write a benchmark's report as strict JSON (see `plain`) to `path` (bench/results/NAME.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plain(report), indent=2, allow_nan=False) + "\n")
    say(f"wrote {path}")


def run_line(result: dict[str, Any], output: Path) -> str:
    """The last line of a benchmark's printout: the load average at start and end, the run's length
    and where its report went."""
    machine = result["machine"]
    return (
        f"load average (1 min) {machine['load_average_start'][0]:.2f} at start, "
        f"{machine['load_average_end'][0]:.2f} at end, on {machine['cpus']} cpus; "
        f"{result['seconds']:.0f} s; wrote {output}"
    )


def publish(
    result: dict[str, Any], output: Path, print_report: Callable[[dict[str, Any], Path], None]
) -> None:
    """Write a benchmark's report (`write_results`), print its tables, then the run's line (`run_line`)."""
    write_results(output, result)
    print_report(result, output)
    print(f"\n{run_line(result, output)}")


class PhaseClock:
    """Seconds each phase of a run took, phase after phase: `lap(name)` ends the current one."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name], self._mark = now - self._mark, now
