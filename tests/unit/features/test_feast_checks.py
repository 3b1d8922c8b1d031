"""Feast without its run-time type checks: Feast's classes are left as they are, every other module's
`@typechecked` still checks, and the `rig` command keeps the checks for `features apply` only.

Each case runs in a fresh interpreter: the skip lasts for the process, and this one imported Feast
long ago.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tests.conftest import REPO


def python(code: str) -> str:
    """What `code` printed, run from a file (typeguard reads the source of what it instruments)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "case.py"
        script.write_text(textwrap.dedent(code))
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


# An instrumented method builds typeguard's memo; Feast's FeatureView.__init__ is one by default.
INSTRUMENTED = "'TypeCheckMemo' in feast.FeatureView.__init__.__code__.co_names"


def test_feast_imported_as_it_is_is_type_checked() -> None:
    assert python(f"import feast; print({INSTRUMENTED})") == "True"


def test_after_the_skip_feast_is_not_instrumented_and_other_modules_still_are() -> None:
    out = python(
        f"""
        from rig.features.feast_checks import skip_feast_type_checks
        skip_feast_type_checks()
        skip_feast_type_checks()  # idempotent
        import feast
        from typeguard import TypeCheckError, typechecked

        @typechecked
        def double(x: int) -> int:
            return 2 * x

        try:
            double("a")
            checked = False
        except TypeCheckError:
            checked = True

        @typechecked(debug_instrumentation=False)  # with options
        def half(x: int) -> int:
            return x // 2

        try:
            half("a")
            with_options = False
        except TypeCheckError:
            with_options = True
        print({INSTRUMENTED}, checked, with_options)
        """
    )
    assert out == "False True True"


def command_skips_checks(*args: str) -> str:
    """Whether Feast's checks were skipped when the `rig` command `args` ran its Feast call."""
    return python(
        f"""
        import typeguard
        from typer.testing import CliRunner
        from rig.cli.app import app
        from rig.features import store

        seen = []

        def record(*_args, **_kwargs):
            seen.append(getattr(typeguard.typechecked, "_rig_skips_feast", False))

        store.FeatureStoreClient.__init__ = lambda self, config: None
        store.FeatureStoreClient.apply = record
        store.FeatureStoreClient.materialize = record
        result = CliRunner().invoke(app, {list(args)!r})
        assert result.exit_code == 0, result.output
        print(*seen)
        """
    )


def test_rig_features_apply_keeps_feasts_checks_and_materialize_skips_them() -> None:
    assert command_skips_checks("features", "apply") == "False"
    assert command_skips_checks("features", "materialize") == "True"


def test_every_way_of_starting_a_worker_skips_them_faust_a_included() -> None:
    # `faust -A streams.worker worker` imports the module and never calls `main()`.
    assert python(f"import streams.worker, feast; print({INSTRUMENTED})") == "False"
