"""Enrichment: store features of each request's entity, overridden by features sent with the request."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rig.wire.codec import ErrorType
from rig.wire.records import Request

MissingEntityPolicy = Literal["defaults", "dlq"]

INTEGER_BOUNDS = {"Int32": 2**31, "Int64": 2**63}
"""Feast integer types of request-time fields: a value v must be whole, with -bound <= v < bound."""


@dataclass(frozen=True)
class Enriched:
    """Raw feature columns of the kept requests, and why the others were rejected.

    Attributes:
        columns: feature name -> float64 array over the kept requests (NaN where unknown; the
            transform's fill steps supply the training defaults).
        found: per kept request, whether the store knew its entity.
        kept: indices (into the input requests) of the kept requests.
        rejected: (index, reason, error_type) of each rejected request.
    """

    columns: dict[str, np.ndarray]
    found: np.ndarray
    kept: np.ndarray
    rejected: list[tuple[int, str, str]]


def enrich(
    requests: Sequence[Request],
    store_columns: dict[str, np.ndarray],
    found: np.ndarray,
    policy: MissingEntityPolicy = "defaults",
    request_fields: Collection[str] = (),
) -> Enriched:
    """Combine the online store's features with request-time features, applying the missing-entity policy.

    Args:
        requests: decoded requests; `features` maps feature name -> value sent with the request.
        store_columns: feature name -> values read from the online store, aligned with `requests`.
        found: whether the store knew each request's entity.
        policy: `defaults` keeps requests of unknown entities (flagged, features filled by the
            transform); `dlq` rejects them.
        request_fields: request-time inputs of on-demand feature views (Feast already used them
            when it read the store): allowed in `features` without being a store column.
    """
    columns = {
        name: np.array(values, dtype=np.float64 if values.dtype.kind in "fiub" else object)
        for name, values in store_columns.items()
    }
    allowed = columns.keys() | set(request_fields)
    keep = np.ones(len(requests), dtype=bool)
    rejected: list[tuple[int, str, str]] = []
    for i, request in enumerate(requests):
        overrides = request.features
        if not overrides:
            continue
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            keep[i] = False
            rejected.append((i, f"unknown request feature(s) {unknown}", ErrorType.INVALID_RECORD))
            continue
        for name, value in overrides.items():
            if name in columns:
                columns[name][i] = value
    if policy == "dlq":
        for i in np.flatnonzero(keep & ~found).tolist():
            keep[i] = False
            rejected.append((i, f"unknown entity {requests[i].entity_id!r}", ErrorType.UNKNOWN_ENTITY))
    kept = np.flatnonzero(keep)
    if kept.size != len(requests):
        columns = {name: values[kept] for name, values in columns.items()}
    return Enriched(columns=columns, found=np.asarray(found, dtype=bool)[kept], kept=kept, rejected=rejected)


def invalid_request_values(
    requests: Sequence[Request], fields: Sequence[str], kinds: Sequence[str]
) -> list[tuple[int, str, str]]:
    """(index, reason, error_type) of each request whose value for an integer request-time field
    (`fields`, of Feast types `kinds`) the field cannot hold: not whole, or out of its range. Bad input,
    found before the online read: Feast fails the read of a whole batch on one such value."""
    bounds = {
        name: INTEGER_BOUNDS[kind] for name, kind in zip(fields, kinds, strict=True) if kind in INTEGER_BOUNDS
    }
    rejected: list[tuple[int, str, str]] = []
    if not bounds:
        return rejected
    for i, request in enumerate(requests):
        for name, bound in bounds.items():
            value = request.features.get(name) if request.features else None
            if value is not None and not (float(value).is_integer() and -bound <= value < bound):
                reason = f"request feature {name!r} must be a whole number in [{-bound}, {bound - 1}]"
                rejected.append((i, f"{reason}, got {value!r}", ErrorType.INVALID_VALUE))
                break
    return rejected
