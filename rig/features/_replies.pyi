"""Redis's replies to pipelined HMGETs, parsed as they arrive (the C extension `_replies.c`)."""

from typing import SupportsIndex

from _typeshed import ReadableBuffer, WriteableBuffer

class ReplyError(Exception): ...

def parse(
    data: ReadableBuffer,
    offset: SupportsIndex,
    done: SupportsIndex,
    replies: SupportsIndex,
    fields: SupportsIndex,
    doubles: SupportsIndex,
    tag: SupportsIndex,
    values: WriteableBuffer,
    slow: list[tuple[int, int, bytes]],
    stamps: list[bytes | None],
    /,
) -> tuple[int, int]: ...
