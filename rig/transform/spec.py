"""Declarative feature-transform spec: the step definitions, their validation and spec parsing.

The data model only: each op's step class (its parameters, checks, and the columns it reads and
writes) and `TransformSpec`, the ordered steps plus output columns, validated as a whole. Fitting
and the vectorised application over a batch live in `rig.transform.fitted`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rig.errors import TransformError

Kind = Literal["numeric", "category", "timestamp"]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    column: str = Field(min_length=1)
    output: str | None = Field(default=None, min_length=1)

    @property
    def target(self) -> str:
        """Column written by the step: `output`, or `column` itself (in place)."""
        return self.output or self.column

    def reads(self) -> tuple[str, ...]:
        return (self.column,)

    def writes(self) -> tuple[str, ...]:
        return (self.target,)


class FillMissing(_Step):
    """NaN/None -> a constant `value` or the fitted training `median`/`mean`; optional 0/1 flag."""

    op: Literal["fill_missing"] = "fill_missing"
    strategy: Literal["constant", "median", "mean"] = "constant"
    value: FiniteFloat | None = None
    indicator: bool = False

    @model_validator(mode="after")
    def _check(self) -> FillMissing:
        if self.strategy == "constant" and self.value is None:
            raise ValueError("fill_missing with strategy 'constant' needs a `value`")
        if self.strategy != "constant" and self.value is not None:
            raise ValueError(f"fill_missing with strategy {self.strategy!r} learns its value; drop `value`")
        return self

    def writes(self) -> tuple[str, ...]:
        return (self.target, f"{self.column}_missing") if self.indicator else (self.target,)


class Log1p(_Step):
    """log(1 + x); negative inputs reject the row."""

    op: Literal["log1p"] = "log1p"


class Clip(_Step):
    """Bound values to [lo, hi] (either may be omitted); ±inf become the bounds."""

    op: Literal["clip"] = "clip"
    lo: FiniteFloat | None = None
    hi: FiniteFloat | None = None

    @model_validator(mode="after")
    def _check(self) -> Clip:
        if self.lo is None and self.hi is None:
            raise ValueError("clip needs `lo`, `hi` or both")
        if self.lo is not None and self.hi is not None and not self.lo <= self.hi:
            raise ValueError(f"clip needs lo <= hi, got lo={self.lo} hi={self.hi}")
        return self


class Bucketize(_Step):
    """Bucket index (0..len(edges)) or one 0/1 column per bucket named `<target>_<b>`."""

    op: Literal["bucketize"] = "bucketize"
    edges: tuple[FiniteFloat, ...] = Field(min_length=1)
    encoding: Literal["index", "one_hot"] = "index"

    @model_validator(mode="after")
    def _check(self) -> Bucketize:
        if (np.diff(self.edges) <= 0).any():
            raise ValueError(f"bucketize edges must be strictly increasing: {self.edges}")
        return self

    def writes(self) -> tuple[str, ...]:
        if self.encoding == "index":
            return (self.target,)
        return tuple(f"{self.target}_{b}" for b in range(len(self.edges) + 1))


class OneHot(_Step):
    """One 0/1 column per category, named `<target>_<category>`; unknown or missing -> all zeros."""

    op: Literal["one_hot"] = "one_hot"
    categories: tuple[Annotated[str, Field(min_length=1)], ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OneHot:
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"one_hot categories must be unique: {self.categories}")
        return self

    def writes(self) -> tuple[str, ...]:
        return tuple(f"{self.target}_{category}" for category in self.categories)


class Ratio(BaseModel):
    """numerator / denominator -> `output`; a zero denominator gives `fill` (never inf)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Literal["ratio"] = "ratio"
    numerator: str = Field(min_length=1)
    denominator: str = Field(min_length=1)
    output: str = Field(min_length=1)
    fill: FiniteFloat = 0.0

    def reads(self) -> tuple[str, ...]:
        return (self.numerator, self.denominator)

    def writes(self) -> tuple[str, ...]:
        return (self.output,)


class Standardize(_Step):
    """(x - mean) / std with mean and std fitted on training data (std 0 -> 1)."""

    op: Literal["standardize"] = "standardize"


class TimeSince(_Step):
    """Seconds from a timestamp column (epoch ms or datetime) to the request's event time `now`."""

    op: Literal["time_since"] = "time_since"


class Passthrough(_Step):
    """Copy a numeric column unchanged (under `output` if given)."""

    op: Literal["passthrough"] = "passthrough"


Step = Annotated[
    FillMissing | Log1p | Clip | Bucketize | OneHot | Ratio | Standardize | TimeSince | Passthrough,
    Field(discriminator="op"),
]
_RAW_KIND: dict[str, Kind] = {"one_hot": "category", "time_since": "timestamp"}


def _input_kinds(steps: Sequence[Step]) -> dict[str, Kind]:
    """Raw input columns (read before any step writes them), in first-read order, with their kind."""
    produced: set[str] = set()
    inputs: dict[str, Kind] = {}
    for step in steps:
        kind = _RAW_KIND.get(step.op, "numeric")
        for column in step.reads():
            if column in produced:
                if kind != "numeric":
                    raise ValueError(f"{step.op} must read a raw input column, {column!r} is computed")
                continue
            if inputs.setdefault(column, kind) != kind:
                raise ValueError(f"input {column!r} is read both as {inputs[column]} and as {kind}")
        writes = step.writes()
        if len(set(writes)) != len(writes):
            raise ValueError(f"{step.op} on {step.reads()} writes one column twice: {writes}")
        produced.update(writes)
    return inputs


class TransformSpec(BaseModel):
    """Ordered steps and the ordered output columns; a step may read what earlier steps wrote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[Step, ...] = Field(min_length=1)
    outputs: tuple[str, ...] = Field(min_length=1)
    allow_missing: bool = False
    """Outputs may be NaN: the model handles missing values itself (as XGBoost does). Infinities
    still reject the row. Off by default: a row with a missing output is rejected with its reason."""

    @model_validator(mode="after")
    def _check(self) -> TransformSpec:
        _input_kinds(self.steps)
        produced = {column for step in self.steps for column in step.writes()}
        unknown = [column for column in self.outputs if column not in produced]
        if unknown:
            raise ValueError(f"outputs not written by any step (use passthrough): {unknown}")
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError(f"outputs must be unique: {self.outputs}")
        return self

    @property
    def input_kinds(self) -> dict[str, Kind]:
        """Raw input columns the transform needs, with how each is read."""
        return _input_kinds(self.steps)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if not self.allow_missing:
            del data["allow_missing"]  # so that transforms written before it keep their version
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformSpec:
        """Raises: TransformError when the spec is invalid."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TransformError(f"invalid transform spec: {exc}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> TransformSpec:
        """Raises: TransformError when the text is not a valid spec."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise TransformError(f"invalid transform spec: {exc}") from exc
