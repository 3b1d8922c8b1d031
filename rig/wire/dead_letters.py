"""The dead-letter topic read back: every record decoded, the letters chosen by reason, error type,
source offsets or request id, counted and the newest kept (`rig dlq`, the worker's dashboard).

A reader is a throwaway consumer that reads the topic from its beginning to its end when it starts and
never commits.
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rig.config import RigSettings
from rig.errors import TopicError

if TYPE_CHECKING:
    from rig.wire.records import DeadLetter


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Offsets FIRST to LAST (both included) of the source topic, on one partition or on any."""

    partition: int | None
    first: int
    last: int

    def covers(self, partition: int, offset: int) -> bool:
        """Whether the message at (partition, offset) of the source topic is in this range."""
        return (self.partition is None or self.partition == partition) and self.first <= offset <= self.last


_OFFSET_RANGE = re.compile(r"(?:(\d+):)?(\d+)(?:-(\d+))?")


def parse_offset_range(text: str) -> OffsetRange:
    """An offset range written `[PARTITION:]FIRST[-LAST]`: `57`, `100-200`, `2:100-200`.

    Raises:
        ValueError: the text is not such a range, or LAST is before FIRST.
    """
    match = _OFFSET_RANGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"offset range {text!r} is not [PARTITION:]FIRST[-LAST]")
    partition, first, last = match.groups()
    start = int(first)
    end = start if last is None else int(last)
    if end < start:
        raise ValueError(f"offset range {text!r} ends before it starts")
    return OffsetRange(None if partition is None else int(partition), start, end)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to take: every given criterion must hold, and within one any value may
    (two reasons select the letters of either). With no criterion every letter is taken."""

    reasons: tuple[str, ...] = ()
    error_types: frozenset[str] = frozenset()
    offsets: tuple[OffsetRange, ...] = ()
    request_ids: frozenset[str] = frozenset()

    def is_everything(self) -> bool:
        """Whether no criterion is given."""
        return not (self.reasons or self.error_types or self.offsets or self.request_ids)

    def matches(self, letter: DeadLetter) -> bool:
        """Whether the dead letter meets every given criterion."""
        reason = letter.reason.casefold()
        return (
            (not self.reasons or any(part.casefold() in reason for part in self.reasons))
            and (not self.error_types or letter.error_type in self.error_types)
            and (not self.offsets or any(r.covers(letter.partition, letter.offset) for r in self.offsets))
            and (not self.request_ids or letter.request_id in self.request_ids)
        )


@dataclass(frozen=True, slots=True)
class StoredLetter:
    """A dead letter and where it sits in the dlq topic."""

    partition: int
    offset: int
    letter: DeadLetter


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record of the dlq topic that is no dead letter, and why."""

    partition: int
    offset: int
    reason: str


def read_dead_letters(config: RigSettings, idle_timeout_s: float = 30) -> Iterator[StoredLetter | Unreadable]:
    """Every record of the dlq topic, from its beginning to its end when called, decoded.

    A throwaway consumer group reads it and never commits. The end of each partition is the one the
    broker reports (`enable.partition.eof`), which also holds when a transaction marker is last.

    Raises:
        TopicError: the dlq topic does not exist, or reading it fails or stalls for `idle_timeout_s`.
        KafkaException: the cluster does not answer.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from rig.wire.codec import Codec, Rejected
    from rig.wire.records import DeadLetter

    topic = config.topic("dlq")
    codec = Codec(DeadLetter, registry_url=config.schema_registry_url)
    consumer = Consumer(
        {
            **config.kafka_client_config(),
            "group.id": f"rig-dlq-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        topics = consumer.list_topics(timeout=idle_timeout_s).topics
        if topic not in topics:
            raise TopicError(f"no topic {topic} on {config.kafka_bootstrap} (`rig topics create` makes it)")
        reading = set(topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(reading)])
        last_news = time.monotonic()
        while reading:
            message = consumer.poll(0.5)
            if message is None:
                if time.monotonic() - last_news > idle_timeout_s:
                    raise TopicError(f"reading {topic} stalled for {idle_timeout_s:g} s")
                continue
            last_news = time.monotonic()
            error = message.error()
            if error is not None and error.code() == KafkaError._PARTITION_EOF:
                reading.discard(message.partition())
            elif error is not None:
                raise TopicError(f"reading {topic}: {error}")
            else:
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # a consumed message has both
                decoded = codec.decode(message.value())
                if isinstance(decoded, Rejected):
                    yield Unreadable(partition, offset, decoded.reason)
                else:
                    yield StoredLetter(partition, offset, decoded)
    finally:
        consumer.close()


@dataclass
class Summary:
    """What `rig dlq show` reports: counts of the selected dead letters and the latest few."""

    topic: str
    limit: int
    read: int = 0
    unreadable: list[Unreadable] = field(default_factory=list)
    by_error_type: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    # The `limit` latest as a min-heap of (received_at, order read, letter): the dlq's partitions
    # are read interleaved, so the last ones read are not the newest.
    _latest: list[tuple[int, int, StoredLetter]] = field(default_factory=list, repr=False)

    @property
    def selected(self) -> int:
        """How many dead letters the selection took."""
        return self.by_error_type.total()

    def add(self, record: StoredLetter) -> None:
        """Count a chosen dead letter, and keep it when it is among the `limit` newest."""
        self.by_error_type[record.letter.error_type] += 1
        self.by_reason[record.letter.reason] += 1
        entry = (record.letter.received_at, self.selected, record)  # selected: a unique tie-break
        if len(self._latest) < self.limit:
            heapq.heappush(self._latest, entry)
        elif self.limit:
            heapq.heappushpop(self._latest, entry)

    def newest_first(self) -> list[StoredLetter]:
        """The kept dead letters, the newest (received last) first."""
        return [record for _, _, record in sorted(self._latest, key=lambda entry: entry[:2], reverse=True)]


def summarize(
    topic: str, records: Iterable[StoredLetter | Unreadable], chosen: Selection, limit: int
) -> Summary:
    """Count the chosen dead letters by error type and by reason, and keep the newest `limit`.

    Args:
        topic: the dlq topic the records were read from (named in the report).
        records: its records in the order read.
        chosen: which dead letters count.
        limit: how many of the newest chosen ones to keep as examples.
    """
    summary = Summary(topic, limit)
    for record in records:
        summary.read += 1
        if isinstance(record, Unreadable):
            summary.unreadable.append(record)
        elif chosen.matches(record.letter):
            summary.add(record)
    return summary


def preview(data: bytes, width: int = 80) -> str:
    """The first `width` bytes as the text of a Python bytes literal (printable ASCII as it is, the
    rest escaped), ending in `…` when there is more."""
    return repr(data[:width])[2:-1] + ("…" if len(data) > width else "")


def utc_text(millis: int) -> str:
    """An epoch-milliseconds time as ISO-8601 UTC text, to the second."""
    return dt.datetime.fromtimestamp(millis / 1000, dt.UTC).isoformat(timespec="seconds")


def summary_json(summary: Summary) -> dict[str, Any]:
    """The summary as a JSON document: every reason's count, and the latest examples newest first."""
    return {
        "topic": summary.topic,
        "read": summary.read,
        "selected": summary.selected,
        "unreadable": [
            {"partition": u.partition, "offset": u.offset, "reason": u.reason} for u in summary.unreadable
        ],
        "by_error_type": dict(summary.by_error_type.most_common()),
        "by_reason": dict(summary.by_reason.most_common()),
        "latest": [
            {
                "dlq_partition": record.partition,
                "dlq_offset": record.offset,
                "received_at": utc_text(record.letter.received_at),
                "source_topic": record.letter.source_topic,
                "partition": record.letter.partition,
                "offset": record.letter.offset,
                "key": None if record.letter.key is None else preview(record.letter.key, 200),
                "request_id": record.letter.request_id,
                "error_type": record.letter.error_type,
                "reason": record.letter.reason,
                "original_bytes": len(record.letter.original),
                "original_preview": preview(record.letter.original),
            }
            for record in summary.newest_first()
        ],
    }
