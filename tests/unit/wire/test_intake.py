"""rig.wire.intake: every message becomes a request or a dead letter, and every dead letter can be
published, however large or strange the message it carries."""

from __future__ import annotations

import json

import pytest

from rig.wire.codec import Codec, ErrorType
from rig.wire.intake import MAX_ORIGINAL_BYTES, Source, dead_letter, take_in
from rig.wire.records import DeadLetter, Request

JSON_REQUEST = {"request_id": "req-1", "entity_id": "customer-1", "event_time": 1_718_000_000_123}
DEAD_LETTERS = Codec(DeadLetter)


def source(value: bytes, key: bytes | None = b"customer-1") -> Source:
    return Source(topic="rig.requests", partition=2, offset=41, key=key, value=value)


def only_dead_letter(codec: Codec[Request], value: bytes, key: bytes | None = b"customer-1") -> DeadLetter:
    batch = take_in(codec, [source(value, key)])
    assert batch.requests == [] and len(batch.dead_letters) == 1
    return batch.dead_letters[0]


@pytest.mark.parametrize("size", [999_900, 5_000_000])
def test_a_dead_letter_of_a_message_near_or_over_the_limit_is_truncated_says_so_and_encodes(
    size: int,
) -> None:
    value = b"\x01" * size
    letter = only_dead_letter(Codec(Request, allow_json=True), value)

    assert DEAD_LETTERS.decode(DEAD_LETTERS.encode(letter)) == letter
    assert len(letter.original) == MAX_ORIGINAL_BYTES and value.startswith(letter.original)
    assert f"message kept {MAX_ORIGINAL_BYTES} of {size} bytes" in letter.reason


def test_a_dead_letter_with_a_huge_key_and_request_id_is_truncated_and_encodes() -> None:
    request = Request(
        request_id="r" * 600_000, entity_id="customer-1", event_time=1, features={"x": float("nan")}
    )
    value = Codec(Request).encode(request)
    letter = only_dead_letter(Codec(Request, max_bytes=2_000_000), value, key=b"k" * 600_000)

    assert DEAD_LETTERS.decode(DEAD_LETTERS.encode(letter)) == letter
    assert letter.error_type == ErrorType.INVALID_VALUE and "non-finite" in letter.reason
    assert letter.request_id is not None and request.request_id.startswith(letter.request_id)
    assert "key kept" in letter.reason and "request_id kept" in letter.reason


def test_a_dead_letter_of_a_small_message_keeps_every_byte_and_its_reason() -> None:
    value = b"\x01not a request"
    letter = only_dead_letter(Codec(Request), value)
    assert (letter.original, letter.key) == (value, b"customer-1")
    assert letter.reason.startswith("unknown message format") and "truncated" not in letter.reason


def test_a_dead_letter_is_encodable_whatever_text_it_is_given() -> None:
    letter = dead_letter(source(b"x"), "reason \ud800 " + "y" * 50_000, "malformed", request_id="\udfff")
    assert DEAD_LETTERS.decode(DEAD_LETTERS.encode(letter)) == letter
    assert letter.request_id == "\\udfff"


@pytest.mark.parametrize("field", ["request_id", "entity_id"])
def test_a_lone_surrogate_in_an_id_is_dead_lettered_at_intake_with_a_reason(field: str) -> None:
    value = json.dumps({**JSON_REQUEST, field: "customer\ud800"}).encode()  # written as \ud800
    letter = only_dead_letter(Codec(Request, allow_json=True), value)

    assert letter.error_type == ErrorType.INVALID_RECORD
    assert field in letter.reason and "lone surrogate" in letter.reason
    assert DEAD_LETTERS.decode(DEAD_LETTERS.encode(letter)) == letter
