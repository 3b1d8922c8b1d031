"""`rig register`: an XGBoost model trained anywhere becomes a stored version, after it is checked.

A model comes as a file written by `Booster.save_model` or `XGBClassifier.save_model` (UBJ or JSON),
with what it reads: a Feast feature service (or `view:feature` refs) and, optionally, a fitted
transform (`rig.transform.fitted`, JSON) that turns those features into the model's columns;
without one, the model reads the features as they are stored, missing values as missing. Before it
can be routed it must read exactly the columns its transform gives (by name when the booster has
names, by count otherwise), every feature must be one the rig serves, and a probe batch (reference
rows from Feast when given, else zeros and missing values) must give finite scores in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rig.config import RigSettings
from rig.errors import RegistryError, RigError
from rig.features.selection import FeatureSelection
from rig.models.registry import ModelMeta, ModelRegistry
from rig.transform.fitted import FittedTransform, identity
from rig.transform.model_inputs import column_index

if TYPE_CHECKING:
    import xgboost

PROBE_ROWS = 64


@dataclass(frozen=True)
class ModelCard:
    """What a person says about a registered model: recorded with it, shown by `rig models`."""

    metrics: Mapping[str, float]
    training_window: str = ""
    description: str = ""


def load_booster(path: Path) -> xgboost.Booster:
    """A booster from a `save_model` file (UBJ or JSON; a Booster's or an XGBClassifier's).

    Raises:
        RegistryError: no such file, or not an XGBoost model.
    """
    import xgboost

    if not path.is_file():
        raise RegistryError(f"no model file at {path}")
    booster = xgboost.Booster()
    try:
        booster.load_model(str(path))
    except xgboost.core.XGBoostError as error:
        raise RegistryError(f"{path} is not an XGBoost model saved with save_model: {error}") from error
    return booster


def register(
    settings: RigSettings,
    path: Path,
    name: str,
    selection: FeatureSelection,
    card: ModelCard,
    transform: FittedTransform | None = None,
    reference: pd.DataFrame | None = None,
) -> ModelMeta:
    """Check a model trained elsewhere and store it as the next version of `name`.

    Args:
        selection: the Feast features it reads (`FeatureStoreClient.selection`).
        transform: its fitted transform; the identity over the selection's columns when None.
        reference: raw feature rows of its training data (e.g. a Feast historical read): the probe
            batch, the reference of serving statistics and explanations.

    Raises:
        RegistryError: the model does not read what its transform gives, a feature cannot be
            served, or the probe batch gives a score that is not a finite probability. Nothing is
            stored then.
    """
    booster = load_booster(path)
    transform = transform or identity(selection.columns)
    missing = [column for column in transform.input_kinds if column not in selection.columns]
    if missing:
        raise RegistryError(f"the transform reads {missing}, which the feature selection does not give")
    try:
        selection.check_types(c for c, kind in transform.input_kinds.items() if kind == "category")
    except RigError as error:
        raise RegistryError(str(error)) from error
    features = _model_columns(booster, transform)
    _probe(booster, transform, features, selection, reference)
    registry = ModelRegistry(settings.model_dir)
    booster.feature_names = list(features)
    numeric = None if reference is None else reference[list(selection.columns)].select_dtypes("number")
    return registry.save(
        booster,
        name=name,
        features=features,
        transform_version=registry.save_transform(transform),
        metrics=dict(card.metrics),
        training={
            "source": f"registered from {path.name}",
            "training_window": card.training_window,
            "description": card.description,
            "feature_service": selection.service or "",
        },
        reference=numeric,
        selection=selection.to_dict(),
    )


def _model_columns(booster: xgboost.Booster, transform: FittedTransform) -> tuple[str, ...]:
    """The transform's columns the model reads: its own feature names, or all of them in order."""
    outputs = transform.output_columns
    width = booster.num_features()
    if booster.feature_names:
        names = tuple(booster.feature_names)
        unknown = [name for name in names if name not in outputs]
        if unknown:
            raise RegistryError(
                f"the model reads {unknown}, which its features do not give (they give {list(outputs)})"
            )
        return names
    if width != len(outputs):
        raise RegistryError(
            f"the model reads {width} unnamed columns, its features give {len(outputs)}: {list(outputs)}"
        )
    return tuple(outputs)


def _probe(
    booster: xgboost.Booster,
    transform: FittedTransform,
    features: Sequence[str],
    selection: FeatureSelection,
    reference: pd.DataFrame | None,
) -> None:
    """Predict a probe batch; every score must be a finite probability."""
    if reference is not None and len(reference):
        frame = reference[list(selection.columns)].head(PROBE_ROWS)
    else:
        numeric = [c for c, kind in zip(selection.columns, selection.types, strict=True) if kind != "String"]
        frame = pd.DataFrame({column: [0.0, np.nan] for column in numeric})
    result = transform.transform(frame)
    rows = result.values[result.row_ok][:, column_index(transform.output_columns, features)]
    if not len(rows):
        raise RegistryError(f"no probe row passes the model's transform: {result.reasons}")
    scores = np.asarray(booster.inplace_predict(rows), dtype=np.float64)
    bad = ~np.isfinite(scores) | (scores < 0) | (scores > 1)
    if scores.shape != (len(rows),) or bad.any():
        raise RegistryError(
            f"the model does not predict a finite probability on probe rows: {scores[bad][:5].tolist()}"
        )
