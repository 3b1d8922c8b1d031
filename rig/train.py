"""Training and export: point-in-time-correct data from Feast, XGBoost, stored with a checksum.

This is the seed's "export model & deploy" notebook as code: labelled events → Feast historical
retrieval (features as of each event) → time-ordered split → XGBoost → registry (UBJ + SHA-256).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rig.config import RigSettings
from rig.data import FEATURE_SETS, World, labelled_events
from rig.metrics import log_loss_per_row, roc_auc
from rig.registry import ModelMeta, ModelRegistry

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


def training_frame(
    world: World,
    historical: Callable[[pd.DataFrame], pd.DataFrame],
    n_events: int,
    seed: int,
    drift_at: datetime | None = None,
) -> pd.DataFrame:
    """Labelled events joined point-in-time to their features by Feast historical retrieval.

    Args:
        world: the synthetic world whose events are labelled.
        historical: a callable `entity_df -> DataFrame` (e.g. `FeatureStoreClient.historical`).
        n_events: how many labelled events to draw.
        seed: seed of the event draw.
        drift_at: labels after this time follow the drifted truth.
    """
    events = labelled_events(world, n_events, seed=seed, drift_at=drift_at)
    frame = historical(events)
    return frame.sort_values(TIME_COLUMN, kind="stable").reset_index(drop=True)


def split_by_time(frame: pd.DataFrame, test_share: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Earlier events train, later events test: the way a deployed model meets the future."""
    cut = int(len(frame) * (1 - test_share))
    return frame.iloc[:cut], frame.iloc[cut:]


def fit_booster(
    train: pd.DataFrame, features: tuple[str, ...], rounds: int = 150, params: dict[str, object] | None = None
) -> xgboost.Booster:
    """Train an XGBoost booster on `features` of `train` (missing values handled natively)."""
    import xgboost

    dtrain = xgboost.DMatrix(
        train[list(features)].to_numpy(np.float32),
        label=train[LABEL_COLUMN].to_numpy(),
        feature_names=list(features),
    )
    return xgboost.train({**DEFAULT_PARAMS, **(params or {})}, dtrain, num_boost_round=rounds)


def train_and_register(
    settings: RigSettings,
    frame: pd.DataFrame,
    feature_set: str = "golden",
    name: str = "risk",
    rounds: int = 150,
    seed: int = 0,
) -> TrainingReport:
    """Train on the earlier 80 % of `frame`, score the later 20 %, and store the model.

    Raises:
        KeyError: unknown feature set (see `rig.data.FEATURE_SETS`).
    """
    features = FEATURE_SETS[feature_set]
    train, test = split_by_time(frame)
    booster = fit_booster(train, features, rounds=rounds, params={"seed": seed})
    scores = booster.inplace_predict(test[list(features)].to_numpy(np.float32))
    labels = test[LABEL_COLUMN].to_numpy()
    auc = roc_auc(labels, scores)
    loss = float(log_loss_per_row(labels, scores).mean())
    meta = ModelRegistry(settings.model_dir).save(
        booster,
        name=name,
        features=features,
        metrics={"auc": auc, "log_loss": loss},
        training={"feature_set": feature_set, "rows": len(train), "rounds": rounds, "seed": seed},
    )
    return TrainingReport(meta=meta, auc=auc, log_loss=loss, n_train=len(train), n_test=len(test))
