"""Messages to fuzz intake with (Hypothesis strategies), and the property every one must keep.

Shared by tests/unit/wire/test_intake_fuzz.py (2,000 examples) and bench/bench_intake_fuzz.py
(100,000 and more). Messages are random bytes, random JSON, and valid requests in every wire format
(single-object Avro, Confluent Avro, JSON) taken apart: bytes flipped, inserted, deleted or cut,
JSON fields replaced by random values (lone surrogates included), headers followed by random bodies.
"""

from __future__ import annotations

import functools
import json

from hypothesis import strategies as st

from rig.wire.codec import SINGLE_OBJECT_MAGIC, Codec, ErrorType
from rig.wire.intake import Source, take_in
from rig.wire.records import DeadLetter, Request
from rig.wire.requests import DEFAULT_KEYS, JoinKey, KeySpec

OUTCOMES = ("request", *(str(error_type) for error_type in ErrorType))
"""What intake makes of a message: a request, or a dead letter of one of these error types."""
TYPED_KEYS = KeySpec((JoinKey("driver_id", "int64"), JoinKey("region", "string")))
_REQUEST_FIELDS = ("request_id", "entity_id", "event_time", "features", "context", "driver_id", "region")


@functools.cache
def codecs(keys: KeySpec) -> dict[str, Codec[Request]]:
    """The intake codec of a deployment with these join keys (JSON allowed, a mock schema registry),
    and the codecs its producers write with."""
    registry = f"mock://intake-fuzz-{'-'.join(keys.names)}"
    return {
        "intake": Codec(Request, allow_json=True, registry_url=registry, shape=keys),
        "single_object": Codec(Request, shape=keys),
        "confluent": Codec(Request, registry_url=registry, shape=keys),
    }


@functools.cache
def _dead_letter_codec() -> Codec[DeadLetter]:
    return Codec(DeadLetter)


# Text of any code point, lone surrogates included: what a JSON `\ud800` escape decodes to.
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
valid_text = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=10,
)


@st.composite
def requests(draw: st.DrawFn, keys: KeySpec) -> Request:
    """A request a producer can write: any values of the right types."""
    if keys == DEFAULT_KEYS:
        entity_id = draw(valid_text)
    else:
        entity_id = keys.entity_id([draw(st.integers(-(2**63), 2**63 - 1)), draw(valid_text)])
    return Request(
        request_id=draw(valid_text),
        entity_id=entity_id,
        event_time=draw(st.integers(-(2**63), 2**63 - 1)),
        features=draw(st.dictionaries(valid_text, st.floats(), max_size=4)),
        context=draw(st.dictionaries(valid_text, valid_text, max_size=3)),
    )


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with one to four bytes flipped, inserted or deleted, or cut short."""
    message = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(message)))
        edit = draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        if edit == "insert":
            message[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "cut":
            del message[at:]
        elif at < len(message):
            if edit == "flip":
                message[at] ^= draw(st.integers(1, 255))
            else:
                del message[at : at + draw(st.integers(1, 8))]
    return bytes(message)


@st.composite
def json_with_changed_fields(draw: st.DrawFn, keys: KeySpec) -> bytes:
    """A valid JSON request whose fields are replaced by random JSON values, removed, or joined by
    unknown ones."""
    plain = json.loads(codecs(keys)["single_object"].encode_json(draw(requests(keys))))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(_REQUEST_FIELDS) | any_text)
        if draw(st.booleans()):
            plain[name] = draw(json_values)
        else:
            plain.pop(name, None)
    return json.dumps(plain).encode()


@st.composite
def messages(draw: st.DrawFn) -> tuple[KeySpec, bytes]:
    """A deployment's join keys and a message for its intake."""
    keys = draw(st.sampled_from((DEFAULT_KEYS, TYPED_KEYS)))
    encoders = codecs(keys)
    request = draw(requests(keys))
    valid = draw(
        st.sampled_from(
            (
                encoders["single_object"].encode(request),
                encoders["confluent"].encode(request),
                encoders["single_object"].encode_json(request),
            )
        )
    )
    header = draw(st.sampled_from((valid[:10], valid[:5], SINGLE_OBJECT_MAGIC + bytes(8))))
    message = draw(
        st.one_of(
            st.binary(max_size=64),
            st.builds(lambda value: json.dumps(value).encode(), json_values),
            st.just(valid),
            mutated(valid),
            json_with_changed_fields(keys),
            st.builds(lambda body: header + body, st.binary(max_size=48)),
        )
    )
    return keys, message


def take_one_in(keys: KeySpec, value: bytes) -> str:
    """Take one message in and check the property intake keeps; its outcome (see OUTCOMES).

    Raises:
        AssertionError: The message is neither one request nor one dead letter with a reason, or
            what intake made of it cannot be written again (a request to the explain topic, a dead
            letter to the dead-letter topic).
    """
    codec = codecs(keys)["intake"]
    batch = take_in(codec, [Source(topic="rig.requests", partition=0, offset=0, key=None, value=value)])
    if batch.requests:
        assert len(batch.requests) == 1 and not batch.dead_letters, batch
        codec.encode(batch.requests[0])
        return "request"
    assert len(batch.dead_letters) == 1, batch
    letter = batch.dead_letters[0]
    assert letter.reason and letter.error_type in OUTCOMES, letter
    _dead_letter_codec().encode(letter)
    return letter.error_type
