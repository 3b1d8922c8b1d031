"""A registered model as a peer server is given it: its file, and rows of the inputs it reads.

A peer (another serving system run beside the rig) does no feature enrichment: it is handed the
model's artifact and rows already transformed, the matrix the rig's own predict stage gives the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rig.config import RigSettings
from rig.models.registry import MODEL_FILE, ModelRegistry
from rig.models.train import model_matrix


def model_file(settings: RigSettings, version: str) -> Path:
    """The XGBoost UBJ file of a registered version (`<model_dir>/<version>/model.ubj`).

    Raises:
        RegistryError: not a registered version.
    """
    return ModelRegistry(settings.model_dir).folder(version) / MODEL_FILE


def feature_rows(settings: RigSettings, version: str, n: int) -> np.ndarray:
    """`n` rows of the model's inputs (float64, its features in its order): its stored reference
    rows (raw training features) through its fitted transform, the rows the transform accepted,
    repeated in order up to `n`.

    Raises:
        RegistryError: not a registered version, or its transform is not stored.
        ValueError: the version has no reference rows, or the transform accepted none of them.
    """
    registry = ModelRegistry(settings.model_dir)
    meta = registry.meta(version)
    reference = registry.reference(version)
    if reference is None:
        raise ValueError(f"model {version} was stored without reference rows")
    x, ok = model_matrix(registry.load_transform(meta.transform_version), reference, meta.features)
    rows = x[ok]
    if not len(rows):
        raise ValueError(f"the transform of {version} rejected every reference row")
    return np.resize(rows, (n, rows.shape[1]))  # np.resize repeats the rows cyclically
