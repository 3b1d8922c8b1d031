"""The rig's C extensions (as pyproject.toml lists them for pip) compile without a warning (pip builds
them with -Wall and without -Werror, so that another compiler's new warning never stops a user's
install; this test is where warnings fail)."""

from __future__ import annotations

import shlex
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
SOURCES = [REPO / source for extension in EXTENSIONS for source in extension["sources"]]
"""The C files pip builds, as pyproject.toml lists them."""


def test_pip_builds_every_c_file_of_the_packages() -> None:
    assert sorted(SOURCES) == sorted(REPO.glob("rig/**/*.c"))


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
