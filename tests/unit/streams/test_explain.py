"""The explain endpoint: `?model=` names a registered version or is refused before it names a file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xgboost

from rig.models.registry import ModelRegistry
from streams.explain import explain_answer


def save_model(root: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(50, 2))
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, label=x[:, 0] > 0), 2)
    meta = ModelRegistry(root).save(booster, "evil", ["f0", "f1"])
    return root / meta.version


def runtime_with(registry: ModelRegistry) -> Any:
    """What the endpoint reads of the worker's runtime: its registry, and nothing routed or served."""
    return SimpleNamespace(
        registry=registry, serving=None, explanations=None, routing=SimpleNamespace(golden=None)
    )


@pytest.mark.parametrize("name", ["absolute", "relative"])
def test_a_model_that_is_a_path_is_refused_with_404(tmp_path: Path, name: str) -> None:
    target = save_model(tmp_path / "elsewhere")
    model = str(target) if name == "absolute" else f"../elsewhere/{target.name}"
    runtime = runtime_with(ModelRegistry(tmp_path / "models"))

    body, status = explain_answer(runtime, "ent-1", model)

    assert status == 404
    assert "is not a model version" in body["error"]


def test_an_unregistered_version_is_refused_with_404(tmp_path: Path) -> None:
    body, status = explain_answer(runtime_with(ModelRegistry(tmp_path)), "ent-1", "risk.7")
    assert status == 404
    assert "unknown model version 'risk.7'" in body["error"]


def test_a_registered_version_that_cannot_be_explained_now_is_a_422(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = save_model(tmp_path).name
    body, status = explain_answer(runtime_with(registry), "ent-1", version)
    assert status == 422
    assert body == {"error": "no golden model is routed"}
