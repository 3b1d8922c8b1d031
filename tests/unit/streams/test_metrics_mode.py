"""A worker's metrics stay in-process even when its parent used Feast (which asks for multiprocess mode)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_worker_started_by_a_feast_using_parent_keeps_its_metrics_in_process() -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": "/tmp/feast_metrics_parent"}  # as feast.metrics sets
    probe = (
        "import streams.worker, prometheus_client.values as values; "
        "print(values.ValueClass is values.MutexValue)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "True", result.stderr
