"""Request-time inputs: values an integer field cannot hold are bad input of their own request."""

from __future__ import annotations

from rig.features.enrich import invalid_request_values
from rig.wire.codec import ErrorType
from rig.wire.records import Request


def request(i: int, **features: float) -> Request:
    return Request(request_id=f"r-{i}", entity_id="1001", event_time=0, features=features)


def test_integer_request_fields_reject_fractions_and_values_out_of_their_range_only() -> None:
    """Feast fails the online read of a whole batch on one such value (`int(1e19)` is out of an Int64's
    range): each is rejected alone, before the read."""
    requests = [
        request(0, val_to_add=1.0, small=2.0),
        request(1, val_to_add=1e19),  # passes the codec's finite check
        request(2, val_to_add=2.5),
        request(3, small=2.0**31),
        request(4, val_to_add=-(2.0**63), small=-(2.0**31)),  # both lower bounds are held
        request(5),  # not sent: the view's own default applies
    ]

    rejected = invalid_request_values(
        requests, ["val_to_add", "small", "rate"], ["Int64", "Int32", "Float64"]
    )

    assert [(i, error_type) for i, _, error_type in rejected] == [
        (1, ErrorType.INVALID_VALUE),
        (2, ErrorType.INVALID_VALUE),
        (3, ErrorType.INVALID_VALUE),
    ]
    assert (
        "'val_to_add' must be a whole number in [-9223372036854775808, 9223372036854775807]" in rejected[0][1]
    )
    assert invalid_request_values(requests, ["rate"], ["Float64"]) == [], "a double holds any finite value"
