"""Typing help for the tests' records: the keyword arguments joined rows share, and a decoded record
that the test knows was accepted."""

from __future__ import annotations

from typing import TypedDict, TypeVar

from rig.wire.codec import Rejected
from rig.wire.records import Record

R = TypeVar("R", bound=Record)


class RequestOutcome(TypedDict):
    """What every model's row of one request has in common: the request and its outcome."""

    request_id: str
    entity_id: str
    label: int
    prediction_time: int
    outcome_time: int


def accepted(result: R | Rejected) -> R:
    """The record a codec decoded, where the test expects no rejection (a rejection fails it, saying why)."""
    assert not isinstance(result, Rejected), result.reason
    return result
