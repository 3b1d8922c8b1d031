"""The rig's C extensions (rig/wire/_avro.c, rig/features/_replies.c) compile without a warning (pip
builds them with -Wall and without -Werror, so that another compiler's new warning never stops a
user's install; this test is where warnings fail)."""

from __future__ import annotations

import shlex
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "rig" / "wire" / "_avro.c", REPO / "rig" / "features" / "_replies.c"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: path.name)
def test_the_extension_compiles_without_warnings(source: Path, tmp_path: Path) -> None:
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    flags = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-fPIC"]

    result = subprocess.run(
        [*compiler, *flags, f"-I{include}", "-c", str(source), "-o", str(tmp_path / "extension.o")],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stderr
