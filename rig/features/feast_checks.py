"""Feast's run-time type checks, skipped where the rig only reads what `feast apply` validated.

Feast decorates its definition classes (FeatureView, OnDemandFeatureView, DataSource, Field, ...)
with typeguard's `@typechecked`, which recompiles every method of each class when the module is
imported: `import feast` took 6.2-6.7 s on the 2-core machine, against 1.9-2.2 s without it, in every
process that imports Feast (each worker and join process at start, each `rig` command). The checks
guard the arguments of those classes' constructors and methods; typeguard itself skips them under
`python -O`, "where the checks aren't meant to be run in production". The worker and the `rig`
commands only build these objects from the registry that `feast apply` wrote; `rig features apply`,
which runs the user's own definitions, keeps them.
"""

from __future__ import annotations

import functools
from typing import Any

_SKIPS_FEAST = "_rig_skips_feast"


def skip_feast_type_checks() -> None:
    """From now on, typeguard's `@typechecked` leaves Feast's functions and classes as they are (as
    under `python -O`); every other module's are still instrumented. Takes effect for Feast's modules
    imported after the call: call it before the first import of Feast. Idempotent."""
    import typeguard

    instrument = typeguard.typechecked
    if getattr(instrument, _SKIPS_FEAST, False):
        return

    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:  # `@typechecked(...)` with options
            return functools.partial(typechecked, **options)
        if str(getattr(target, "__module__", "")).split(".")[0] == "feast":
            return target
        return instrument(target, **options)

    setattr(typechecked, _SKIPS_FEAST, True)
    typeguard.typechecked = typechecked
