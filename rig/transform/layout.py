"""A deployment's batch matrix: every model scored with its own transform, each transform applied once.

Models may be trained with different transforms (a challenger on another transform version, the
previous golden after a promotion) and read their features from different views. A batch is
transformed once per block (a distinct transform fed from distinct columns); the outputs sit side by
side in one float32 matrix, and each model reads only its own columns of its own block. A row the
golden's block rejects is dead-lettered with its reason; a row another block rejects is only left
out for the models on that block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rig.errors import TransformError
from rig.transform.fitted import FittedTransform
from rig.transform.model_inputs import column_index


@dataclass(frozen=True)
class ModelInput:
    """Where one model's input lives in the batch matrix."""

    transform_version: str
    columns: np.ndarray
    """Positions of the model's features in the batch matrix."""
    block: int
    """The block (transform and its input columns) the model reads."""


@dataclass(frozen=True)
class LaidOut:
    """A transformed batch.

    Attributes:
        values: rows x every block's outputs, float32.
        ok: per block, the rows its transform accepted.
        reasons: the golden's block's reason per rejected row.
    """

    values: np.ndarray
    ok: dict[int, np.ndarray]
    reasons: dict[int, str]


@dataclass(frozen=True)
class _Block:
    transform: FittedTransform
    inputs: dict[str, str]
    """The transform's input name → the batch column it reads."""
    offset: int


class InputLayout:
    """The blocks of the batch matrix and each model's columns (see the module docstring)."""

    def __init__(
        self,
        transforms: Mapping[str, FittedTransform],
        models: Mapping[str, tuple[str, Sequence[str], Mapping[str, str]]],
        golden: str,
    ) -> None:
        """Args:
            transforms: fitted transforms by version.
            models: per model version, (its transform version, the output columns it reads, its
                renaming: a raw input name → the batch column holding it, where they differ).
            golden: the golden model's version (its block decides what is dead-lettered).

        Raises:
            TransformError: a model's transform is missing or does not produce a column it reads.
        """
        self.transforms = dict(transforms)
        blocks: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self.blocks: list[_Block] = []
        self.models: dict[str, ModelInput] = {}
        width = 0
        for model, (transform_version, features, renaming) in models.items():
            transform = self.transforms.get(transform_version)
            if transform is None:
                raise TransformError(
                    f"model {model} reads transform {transform_version}, which is not loaded"
                )
            inputs = {name: renaming.get(name, name) for name in transform.input_kinds}
            key = (transform_version, tuple(sorted(inputs.items())))
            if key not in blocks:
                blocks[key] = len(self.blocks)
                self.blocks.append(_Block(transform, inputs, width))
                width += len(transform.output_columns)
            block = blocks[key]
            try:
                own = column_index(transform.output_columns, features)
            except KeyError as error:
                raise TransformError(f"model {model}: {error}") from error
            self.models[model] = ModelInput(transform_version, own + self.blocks[block].offset, block)
        if golden not in self.models:
            raise TransformError(f"the golden model {golden} is not in the layout")
        self.width = width
        self.golden_block = self.models[golden].block
        self.golden_transform = self.models[golden].transform_version

    @property
    def golden(self) -> FittedTransform:
        """The golden model's transform."""
        return self.blocks[self.golden_block].transform

    def inputs(self) -> dict[str, ModelInput]:
        """Each model's input."""
        return self.models

    def transform(self, columns: Mapping[str, np.ndarray], now: Any = None) -> LaidOut:
        """Transform a batch of raw feature columns with every block of the layout, once each."""
        n = len(next(iter(columns.values()))) if columns else 0
        values = np.full((n, self.width), np.nan, dtype=np.float32)
        ok: dict[int, np.ndarray] = {}
        reasons: dict[int, str] = {}
        for index, block in enumerate(self.blocks):
            result = block.transform.transform(
                {name: columns[column] for name, column in block.inputs.items()}, now=now
            )
            width = len(block.transform.output_columns)
            values[:, block.offset : block.offset + width] = result.values
            ok[index] = np.asarray(result.row_ok, dtype=bool)
            if index == self.golden_block:
                reasons = dict(result.reasons)
        return LaidOut(values=values, ok=ok, reasons=reasons)

    def transform_for(self, model: str, columns: Mapping[str, np.ndarray], now: Any = None) -> Any:
        """One model's block applied to raw feature columns (its `TransformResult`)."""
        block = self.blocks[self.models[model].block]
        return block.transform.transform(
            {name: columns[column] for name, column in block.inputs.items()}, now=now
        )
