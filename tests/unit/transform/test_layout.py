"""The batch matrix of a deployment: each model scored with its own transform, from its own columns."""

from __future__ import annotations

import numpy as np
import pytest

from rig.errors import TransformError
from rig.transform.fitted import FittedTransform, fit, identity
from rig.transform.layout import InputLayout
from rig.transform.spec import TransformSpec

RAW = {"amount": np.array([1.0, 3.0, np.nan]), "rate": np.array([0.5, 0.25, 0.75])}


def logged() -> FittedTransform:
    """Rejects a row without `amount` (no allow_missing)."""
    spec = TransformSpec.from_dict(
        {
            "steps": [
                {"op": "log1p", "column": "amount", "output": "log_amount"},
                {"op": "passthrough", "column": "rate"},
            ],
            "outputs": ["log_amount", "rate"],
        }
    )
    return fit(spec, RAW)


def test_each_model_reads_its_own_transform_and_the_golden_block_decides_rejections() -> None:
    transforms = {"t.1": identity(["amount", "rate"]), "t.2": logged()}
    layout = InputLayout(
        transforms,
        {"golden": ("t.2", ["log_amount"], {}), "challenger": ("t.1", ["rate", "amount"], {})},
        golden="golden",
    )
    laid = layout.transform(RAW)
    golden, challenger = layout.models["golden"], layout.models["challenger"]
    assert golden.block != challenger.block
    np.testing.assert_allclose(laid.values[:2, golden.columns[0]], np.log1p([1.0, 3.0]), rtol=1e-6)
    np.testing.assert_allclose(laid.values[:, challenger.columns], [[0.5, 1.0], [0.25, 3.0], [0.75, np.nan]])
    assert laid.ok[golden.block].tolist() == [True, True, False]
    assert laid.ok[challenger.block].tolist() == [True, True, True], "the challenger reads missing values"
    assert "amount" in laid.reasons[2]
    assert layout.golden_transform == "t.2"


def test_models_on_one_transform_and_one_input_share_a_block() -> None:
    layout = InputLayout(
        {"t.1": identity(["amount", "rate"])},
        {"a": ("t.1", ["amount"], {}), "b": ("t.1", ["rate"], {})},
        golden="a",
    )
    assert len(layout.blocks) == 1 and layout.width == 2


def test_a_renamed_input_is_read_from_the_batch_column_that_holds_it() -> None:
    """Two views give `rate`: the batch holds the second as `fresh__rate`, which one model reads."""
    columns = {**RAW, "fresh__rate": np.array([9.0, 8.0, 7.0])}
    transforms = {"t.1": identity(["amount", "rate"])}
    layout = InputLayout(
        transforms,
        {"old": ("t.1", ["rate"], {}), "new": ("t.1", ["rate"], {"rate": "fresh__rate"})},
        golden="old",
    )
    laid = layout.transform(columns)
    assert len(layout.blocks) == 2, "one transform fed from different columns is two blocks"
    np.testing.assert_allclose(laid.values[:, layout.models["old"].columns[0]], [0.5, 0.25, 0.75])
    np.testing.assert_allclose(laid.values[:, layout.models["new"].columns[0]], [9.0, 8.0, 7.0])
    alone = layout.transform_for("new", columns)
    np.testing.assert_allclose(alone.values[:, alone.columns.index("rate")], [9.0, 8.0, 7.0])


def test_a_model_reading_a_column_its_transform_does_not_produce_is_refused() -> None:
    with pytest.raises(TransformError, match=r"m\.1"):
        InputLayout({"t.1": identity(["amount"])}, {"m.1": ("t.1", ["rate"], {})}, golden="m.1")


def test_a_model_whose_transform_is_not_loaded_is_refused() -> None:
    with pytest.raises(TransformError, match=r"t\.9"):
        InputLayout({}, {"m.1": ("t.9", ["rate"], {})}, golden="m.1")
