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


def store_outside(folder: Path) -> Path:
    """A complete model version (artifact and meta.json) outside the registry's folder."""
    outside = ModelRegistry(folder)
    meta = outside.save(small_booster(), "evil", FEATURES)
    return folder / meta.version


@pytest.mark.parametrize("name", ["absolute", "relative"])
def test_a_version_that_is_a_path_never_loads_a_file_outside_the_registry(tmp_path: Path, name: str) -> None:
    registry = ModelRegistry(tmp_path / "models")
    registry.save(small_booster(), "risk", FEATURES)
    target = store_outside(tmp_path / "elsewhere")
    version = str(target) if name == "absolute" else f"../elsewhere/{target.name}"

    for read in (registry.load, registry.load_bytes, registry.meta, registry.reference):
        with pytest.raises(RegistryError, match="is not a model version"):
            read(version)


@pytest.mark.parametrize("version", ["risk", "risk.0", "risk.1\n", "Risk.1", "risk.1/../risk.1", ""])
def test_only_names_of_the_registry_s_version_form_are_versions(tmp_path: Path, version: str) -> None:
    registry = ModelRegistry(tmp_path)
    registry.save(small_booster(), "risk", FEATURES)
    with pytest.raises(RegistryError, match="is not a model version"):
        registry.meta(version)
    assert registry.folder("risk.1") == tmp_path / "risk.1"


def test_a_transform_version_that_is_a_path_is_refused(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "models")
    with pytest.raises(RegistryError, match="is not a transform version"):
        registry.load_transform(str(tmp_path / "elsewhere" / "0123456789abcdef"))


def test_folders_that_are_not_versions_are_not_listed(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    registry.save(small_booster(), "risk", FEATURES)
    (tmp_path / "not-a-version").mkdir()
    (tmp_path / "not-a-version" / "meta.json").write_text("{}")
    assert [meta.version for meta in registry.versions()] == ["risk.1"]
