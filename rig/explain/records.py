"""The JSON-ready record mixin shared by the explanation dataclasses (SHAP, anchors, counterfactuals)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def _jsonable(value: Any) -> Any:
    """Plain JSON values: tuples as lists, NaN as None."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


class Record:
    """Mixin of the explanation dataclasses: `to_dict` gives JSON-ready fields."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]
