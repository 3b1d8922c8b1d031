"""Training and export: point-in-time-correct data from Feast, XGBoost, stored with a checksum.

This is the seed's "export model & deploy" notebook as code: labelled events (an entity dataframe
with a label column) → Feast historical retrieval (features as of each event) → time-ordered split →
the inference-time transform (fitted on the training part only) → XGBoost → registry (UBJ + SHA-256,
the fitted transform beside it, and a sample of the raw training features as its reference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rig.config import RigSettings
from rig.features.selection import FeatureSelection
from rig.models.metrics import log_loss_per_row, roc_auc
from rig.models.registry import ModelMeta, ModelRegistry
from rig.transform.fitted import FittedTransform, fit
from rig.transform.model_inputs import column_index, model_columns
from rig.transform.spec import TransformSpec

if TYPE_CHECKING:
    import xgboost

TIME_COLUMN = "event_timestamp"
LABEL_COLUMN = "label"

DEFAULT_PARAMS: dict[str, object] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "max_depth": 5,
    "eta": 0.1,
    "subsample": 0.9,
    "colsample_bytree": 0.9,
    "min_child_weight": 5,
    "tree_method": "hist",
    "nthread": 2,
}


@dataclass(frozen=True)
class TrainingReport:
    """What one training run produced and how well it scored on held-out (later) events."""

    meta: ModelMeta
    auc: float
    log_loss: float
    n_train: int
    n_test: int


def training_frame(events: pd.DataFrame, historical: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """Labelled events joined point-in-time to their features, in time order.

    Args:
        events: rows with the join key, `event_timestamp` and `label`.
        historical: a callable `entity_df -> DataFrame` (e.g. `FeatureStoreClient.historical`).
    """
    frame = historical(events)
    return frame.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)


def split_by_time(frame: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earlier events train, later events test: the way a deployed model meets the future."""
    cut = int(len(frame) * (1 - test_share))
    return frame.iloc[:cut], frame.iloc[cut:]


def load_transform_spec(settings: RigSettings) -> TransformSpec:
    """The deployment's transform spec (`settings.transform_spec`, JSON)."""
    return TransformSpec.from_json(settings.transform_spec.read_text())


def model_matrix(
    transform: FittedTransform, frame: pd.DataFrame, features: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Transformed `features` of every row of `frame`, and the mask of rows the transform accepted."""
    result = transform.transform(frame)
    return result.values[:, column_index(result.columns, features)], result.row_ok


def fit_booster(
    x: np.ndarray,
    labels: np.ndarray,
    features: tuple[str, ...],
    rounds: int = 150,
    params: dict[str, object] | None = None,
) -> xgboost.Booster:
    """Train an XGBoost booster on matrix `x` whose columns are `features`."""
    import xgboost

    dtrain = xgboost.DMatrix(x, label=labels, feature_names=list(features))
    return xgboost.train({**DEFAULT_PARAMS, **(params or {})}, dtrain, num_boost_round=rounds)


def train_and_register(
    settings: RigSettings,
    frame: pd.DataFrame,
    raw_features: Sequence[str],
    name: str = "risk",
    rounds: int = 150,
    seed: int = 0,
    transform: FittedTransform | None = None,
    training: dict[str, str | int | float] | None = None,
    selection: FeatureSelection | None = None,
) -> TrainingReport:
    """Train on the earlier 80 % of `frame`, score the later 20 %, and store model and transform.

    Args:
        frame: training rows in time order (see `training_frame`), with a `label` column.
        raw_features: the feature store's features the model reads (before the transform).
        transform: a transform already fitted on the same training part (to share it between the
            models of one deployment); fitted here from `settings.transform_spec` when not given.
        training: more to record about the run in the model's metadata (e.g. a feature set's name).
        selection: the Feast features `frame` was read with (recorded: the workers read them).
    """
    train, test = split_by_time(frame)
    fitted = transform or fit(load_transform_spec(settings), train)
    features = model_columns(fitted.output_columns, tuple(raw_features))
    x_train, ok_train = model_matrix(fitted, train, features)
    x_test, ok_test = model_matrix(fitted, test, features)
    labels_train = train[LABEL_COLUMN].to_numpy()[ok_train]
    booster = fit_booster(x_train[ok_train], labels_train, features, rounds=rounds, params={"seed": seed})
    scores = booster.inplace_predict(x_test[ok_test])
    labels = test[LABEL_COLUMN].to_numpy()[ok_test]
    auc = roc_auc(labels, scores)
    loss = float(log_loss_per_row(labels, scores).mean())
    registry = ModelRegistry(settings.model_dir)
    meta = registry.save(
        booster,
        name=name,
        features=features,
        transform_version=registry.save_transform(fitted),
        metrics={"auc": auc, "log_loss": loss},
        training={
            **(training or {}),
            "rows": int(ok_train.sum()),
            "rejected_rows": int((~ok_train).sum()),
            "rounds": rounds,
            "seed": seed,
        },
        reference=train.select_dtypes("number").drop(columns=[LABEL_COLUMN]),
        selection=None if selection is None else selection.to_dict(),
    )
    return TrainingReport(meta=meta, auc=auc, log_loss=loss, n_train=int(ok_train.sum()), n_test=len(labels))
