"""Training through Feast historical retrieval gives a model that beats chance on later events."""

from __future__ import annotations

import pytest

from rig.errors import ModelIntegrityError
from rig.features.store import FeatureStoreClient
from rig.models.metrics import roc_auc
from rig.models.registry import MODEL_FILE, ModelRegistry
from rig.models.train import model_matrix, split_by_time, train_and_register
from sim.deploy import world_training_frame, write_world
from sim.settings import WorldSettings
from sim.world import FEATURE_SETS
from tests.integration.conftest import isolated_feast_settings

pytestmark = pytest.mark.integration


def test_model_trained_on_point_in_time_features_scores_well_above_chance(tmp_path) -> None:
    settings = isolated_feast_settings(tmp_path)
    world = write_world(settings, WorldSettings(seed=11, entities=500, days=10))
    client = FeatureStoreClient(settings)
    client.apply()

    frame = world_training_frame(world, client.historical, n_events=8_000, seed=2)
    report = train_and_register(settings, frame, FEATURE_SETS["golden"], rounds=80)
    print(f"held-out AUC {report.auc:.3f} on {report.n_test} later events (trained on {report.n_train})")

    assert report.auc > 0.70
    # The stored artifact reproduces the reported AUC: what was registered is what was measured.
    registry = ModelRegistry(settings.model_dir)
    booster = registry.load(report.meta.version)
    meta = registry.meta(report.meta.version)
    transform = registry.load_transform(meta.transform_version)
    test = split_by_time(frame)[1]
    x_test, ok = model_matrix(transform, test, meta.features)
    scores = booster.inplace_predict(x_test[ok])
    assert roc_auc(test["label"].to_numpy()[ok], scores) == pytest.approx(report.auc, abs=1e-9)
    assert registry.meta(report.meta.version).metrics["auc"] == pytest.approx(report.auc)

    # A tampered artifact is refused, not silently served.
    path = settings.model_dir / report.meta.version / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        registry.load(report.meta.version)
