"""Model registry: artifacts round-trip exactly, tampering is refused, roles are kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost

from rig.errors import ModelIntegrityError, RegistryError
from rig.models.registry import MODEL_FILE, ModelRegistry

FEATURES = ("a", "b", "c")


def small_booster(seed: int = 0) -> xgboost.Booster:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    dtrain = xgboost.DMatrix(x, label=y, feature_names=list(FEATURES))
    return xgboost.train({"objective": "binary:logistic", "max_depth": 3}, dtrain, num_boost_round=10)


def test_saved_model_loads_back_with_identical_predictions(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    booster = small_booster()
    meta = registry.save(booster, "risk", FEATURES, metrics={"auc": 0.9})
    x = np.random.default_rng(1).normal(size=(50, 3))

    loaded = registry.load(meta.version)

    np.testing.assert_array_equal(loaded.inplace_predict(x), booster.inplace_predict(x))
    assert registry.meta(meta.version).features == FEATURES
    assert registry.meta(meta.version).metrics == {"auc": 0.9}


def test_versions_of_one_name_are_numbered_in_order(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.save(small_booster(0), "risk", FEATURES)
    second = registry.save(small_booster(1), "risk", FEATURES)
    assert (first.version, second.version) == ("risk.1", "risk.2")
    assert [meta.version for meta in registry.versions()] == ["risk.1", "risk.2"]


def test_a_model_whose_bytes_changed_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    meta = registry.save(small_booster(), "risk", FEATURES)
    other = registry.save(small_booster(seed=5), "risk", FEATURES)
    # Swap in another valid model: it parses fine, but it is not the one registered under this version.
    (tmp_path / meta.version / MODEL_FILE).write_bytes((tmp_path / other.version / MODEL_FILE).read_bytes())

    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        registry.load(meta.version)


def test_unknown_version_and_bad_names_are_clear_errors(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="unknown model version"):
        registry.load("risk.9")
    with pytest.raises(RegistryError, match="must match"):
        registry.save(small_booster(), "Bad Name!", FEATURES)
