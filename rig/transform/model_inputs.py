"""Which transform output columns a model reads, and the matrix it is given.

Every model of a deployment reads the output of one fitted transform; a model trained on a feature
set reads only the output columns derived from the raw features of that set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def model_columns(output_columns: Sequence[str], raw_features: Sequence[str]) -> tuple[str, ...]:
    """Output columns derived from `raw_features`: the feature itself or a column named `<feature>_...`."""
    raw = tuple(raw_features)
    return tuple(
        column for column in output_columns if any(column == f or column.startswith(f + "_") for f in raw)
    )


def column_index(output_columns: Sequence[str], features: Sequence[str]) -> np.ndarray:
    """Positions of a model's `features` in the transform's `output_columns`.

    Raises:
        KeyError: a feature the model needs is not produced by the transform.
    """
    position = {name: i for i, name in enumerate(output_columns)}
    missing = [name for name in features if name not in position]
    if missing:
        raise KeyError(f"transform does not produce feature(s) {missing} the model needs")
    return np.array([position[name] for name in features], dtype=np.intp)
