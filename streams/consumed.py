"""Consumed messages as the rig reads them: where each came from, and the dead letter of one refused as
bad input. Shared by the predict path, the join and the promoter."""

from __future__ import annotations

import logging

from confluent_kafka import Message

from rig.config import RigSettings
from rig.wire.codec import Codec
from rig.wire.intake import Source, dead_letter
from streams.plane.sink import Outgoing

log = logging.getLogger(__name__)


def dead_letter_output(
    settings: RigSettings,
    codec: Codec,
    message: Message,
    reason: str,
    error_type: str,
    request_id: str | None = None,
) -> Outgoing:
    """A consumed message refused as bad input, as its dead letter for `rig.dlq` (`codec` encodes
    DeadLetter records), logged with where it came from."""
    source = source_of(message)
    log.warning(
        "dead letter topic=%s partition=%s offset=%s request_id=%s reason=%s",
        source.topic,
        source.partition,
        source.offset,
        request_id,
        reason,
    )
    letter = dead_letter(source, reason, error_type, request_id)
    return Outgoing(settings.topic("dlq"), message.key(), codec.encode(letter))


def source_of(message: Message) -> Source:
    """Where a librdkafka message came from (a tombstone's value is read as empty bytes)."""
    # A consumed message has its topic, partition and offset; confluent-kafka types them Optional.
    return Source(
        message.topic(),  # type: ignore[arg-type]
        message.partition(),  # type: ignore[arg-type]
        message.offset(),  # type: ignore[arg-type]
        message.key(),
        message.value() or b"",
        float(message.timestamp()[1]),
    )
