"""rig.features.online_reader.parse_replies (`_replies.c`): Redis's replies to pipelined HMGETs, read
in whatever pieces the socket gives them, feature values straight into doubles."""

from __future__ import annotations

import itertools
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rig.features._replies import ReplyError
from rig.features.online_reader import parse_replies

TAG = 0x29


def resp(replies: list[list[bytes | None]], null: bytes = b"$-1\r\n") -> bytes:
    """HMGET replies as Redis writes them (RESP2 arrays of bulk strings; `null` for a missing field)."""
    out = []
    for reply in replies:
        out.append(b"*%d\r\n" % len(reply))
        for value in reply:
            out.append(null if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


def double(value: float) -> bytes:
    return bytes([TAG]) + struct.pack("<d", value)


REPLIES: list[list[bytes | None]] = [
    [double(1.5), double(-2.0), b"ts-1"],
    [None, b"", None],
    [b"\x3d\x00\x00\x80\x3e", double(math.inf), b"ts-2"],  # a float_val: not a double, decoded by the caller
    [double(3.25), b"\x29short", b"ts-1"],
]


def test_values_stamps_and_what_is_not_a_double_come_out_by_entity() -> None:
    replies = parse_replies([resp(REPLIES)], len(REPLIES), 3, 2, TAG)

    values = np.frombuffer(replies.values, np.float64).reshape(4, 2)
    np.testing.assert_array_equal(values, [[1.5, -2.0], [np.nan, np.nan], [np.nan, math.inf], [3.25, np.nan]])
    assert replies.slow == [(2, 0, b"\x3d\x00\x00\x80\x3e"), (3, 1, b"\x29short")]
    assert replies.stamps == [b"ts-1", None, b"ts-2", b"ts-1"]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(resp(REPLIES))), max_size=12))
def test_replies_split_anywhere_parse_as_if_whole(cuts: list[int]) -> None:
    data = resp(REPLIES)
    bounds = [0, *sorted(cuts), len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    whole = parse_replies([data], len(REPLIES), 3, 2, TAG)

    split = parse_replies(chunks, len(REPLIES), 3, 2, TAG)

    assert split.values == whole.values and split.slow == whole.slow and split.stamps == whole.stamps


def test_resp3_nulls_read_as_missing_fields() -> None:
    replies = parse_replies([resp([[None, b"ts"]], null=b"_\r\n")], 1, 2, 1, TAG)

    assert math.isnan(np.frombuffer(replies.values)[0]) and replies.stamps == [b"ts"]


def test_without_the_tag_every_value_is_left_to_the_caller() -> None:
    replies = parse_replies([resp([[double(1.5), b"ts"]])], 1, 2, 1, -1)

    assert replies.slow == [(0, 0, double(1.5))]


def test_an_error_reply_raises_with_redis_message() -> None:
    data = resp(REPLIES[:1]) + b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"

    with pytest.raises(ReplyError, match="WRONGTYPE"):
        parse_replies([data], 2, 3, 2, TAG)


@pytest.mark.parametrize(
    "data",
    [
        b":1\r\n",  # not an array
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",  # two fields where three were asked for
        b"*3\r\n$x\r\n",  # a length that is not a number
        b"*3\r\n$1\r\nabc\r\n",  # a bulk longer than its length
        b"*3\r\n+OK\r\n",  # a field that is not a bulk string
    ],
)
def test_what_is_not_an_array_of_bulk_strings_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_replies([data + b"\r\n" * 20], 1, 3, 2, TAG)


def test_bytes_that_end_before_the_last_reply_are_refused() -> None:
    with pytest.raises(ValueError, match="1 of 2 replies"):
        parse_replies([resp(REPLIES[:1]), b"*3\r\n$9"], 2, 3, 2, TAG)
