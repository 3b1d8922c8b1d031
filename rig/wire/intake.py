"""Intake of a batch of raw request messages: decode, validate, and turn bad ones into dead letters.

Errors are data: the batch holds the good requests (with where each came from) and a dead letter
for every bad message, so the pipeline keeps going and nothing valid is dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rig.wire.codec import Codec, ErrorType, Rejected
from rig.wire.records import DeadLetter, Request


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: enough to find it again and to dead-letter it with its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: float = 0.0


@dataclass
class RequestBatch:
    """The requests of one micro-batch still on their way, aligned with their sources, and the
    dead letters of those that fell out. Each stage narrows it with `keep`; nothing leaves silently."""

    requests: list[Request]
    sources: list[Source]
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests)

    def entity_ids(self) -> list[str]:
        """Entity id of each request."""
        return [r.entity_id for r in self.requests]

    def keep(self, kept: Sequence[int] | np.ndarray, rejected: Iterable[tuple[int, str, str]] = ()) -> None:
        """Keep the requests at positions `kept`; dead-letter each (position, reason, error_type)."""
        for i, reason, error_type in rejected:
            self.dead_letters.append(
                dead_letter(self.sources[i], reason, error_type, self.requests[i].request_id)
            )
        self.requests = [self.requests[i] for i in kept]
        self.sources = [self.sources[i] for i in kept]

    def reject_all(self, reason: str, error_type: str) -> None:
        """Dead-letter every remaining request (e.g. no golden model, or the golden failed)."""
        self.keep([], [(i, reason, error_type) for i in range(len(self.requests))])


def dead_letter(source: Source, reason: str, error_type: str, request_id: str | None = None) -> DeadLetter:
    """The DeadLetter record of a message that cannot be answered (the only place one is built)."""
    return DeadLetter(
        received_at=int(time.time() * 1000),
        source_topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key=source.key,
        original=source.value,
        reason=reason,
        error_type=str(error_type),
        request_id=request_id,
    )


def invalid_reason(request: Request) -> str | None:
    """Why a decoded request cannot be answered, or None when it can."""
    if not request.request_id.strip():
        return "request_id is empty"
    if not request.entity_id.strip():
        return "entity_id is empty"
    bad = sorted(name for name, value in request.features.items() if not math.isfinite(value))
    if bad:
        return f"non-finite request feature(s) {bad} (NaN or infinity)"
    return None


def take_in(codec: Codec[Request], sources: Sequence[Source]) -> RequestBatch:
    """Decode and validate a batch of raw request messages.

    Returns:
        A `RequestBatch`: valid requests in arrival order, and a dead letter for every message that
        is malformed, of another schema, oversized, incomplete or carries non-finite values.
    """
    requests: list[Request] = []
    kept: list[Source] = []
    dead: list[DeadLetter] = []
    for source in sources:
        decoded = codec.decode(source.value)
        if isinstance(decoded, Rejected):
            dead.append(dead_letter(source, decoded.reason, decoded.error_type))
            continue
        reason = invalid_reason(decoded)
        if reason is not None:
            dead.append(dead_letter(source, reason, ErrorType.INVALID_VALUE, decoded.request_id or None))
            continue
        requests.append(decoded)
        kept.append(source)
    return RequestBatch(requests=requests, sources=kept, dead_letters=dead)
