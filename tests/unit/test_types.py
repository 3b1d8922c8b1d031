"""The library, the workers, the simulator, the tests and the benchmarks type-check (mypy, configured in
pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_the_code_tests_and_benchmarks_have_no_type_errors() -> None:
    mypy = Path(sys.executable).with_name("mypy")
    # Its files and settings come from [tool.mypy]; a cold run takes ~40 s, a cached one ~2 s.
    result = subprocess.run([str(mypy)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert result.stdout.startswith("Success: no issues found"), result.stdout[-2000:]
