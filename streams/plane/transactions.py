"""Exactly once: a batch's outputs and its input offsets in one Kafka transaction (EOS v2).

With `RIG_PROCESSING_GUARANTEE=exactly_once` a plane publishes through a `TransactionalSink`
instead of a `DeliveringSink`: each batch is one transaction holding every output and, through
`send_offsets_to_transaction` with the consumer's group metadata, the offsets after the batch. A
`read_committed` consumer (librdkafka's default) sees the outputs of a batch exactly once, however
often the batch was processed: an aborted or never committed transaction leaves nothing visible,
and its input is read again from the last committed offsets. The group metadata fences a worker
that lost its partitions in a rebalance (KIP-447): its late commit fails and is abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streams.plane.health import Health
from streams.plane.ledger import OffsetLedger
from streams.plane.sink import Outgoing, exit_if_fatal

log = logging.getLogger(__name__)

DEPENDENCY = "Kafka (transactions)"
FIRST_RETRY_S = 0.2
LAST_RETRY_S = 5.0


class TransactionalSink:
    """Publishes batches transactionally, one at a time (a transaction must end before the next)."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        group_id: str,
        ledger: OffsetLedger,
        health: Health,
        group_metadata: Callable[[], Any],
        timeout_s: float,
    ) -> None:
        """`group_metadata()` returns the source consumer's current group metadata; `timeout_s` is how
        long the broker keeps one of its transactions open before aborting it: the longest a killed
        worker's open transaction hides newer outputs from read_committed readers (plus the broker's
        `transaction.abort.timed.out.transaction.cleanup.interval.ms`). librdkafka then also bounds
        its message and socket timeouts by it; an aborted transaction is tried again."""
        # Unique per producer: with the group metadata fencing zombies (KIP-447), the id need not be
        # stable across restarts, and two planes or processes must never share one.
        self.transactional_id = f"{group_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._producer = Producer(
            {
                "linger.ms": 5,
                **producer_config,
                "enable.idempotence": True,
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": int(timeout_s * 1000),
                "allow.auto.create.topics": False,
            }
        )
        self._ledger = ledger
        self._health = health
        self._group_metadata = group_metadata

    def start(self) -> TransactionalSink:
        """Register the transactional id with the cluster (waits for the broker)."""
        delay = FIRST_RETRY_S
        while True:
            try:
                self._producer.init_transactions(30)
                return self
            except KafkaException as error:
                exit_if_fatal(error.args[0], "transactional")
                log.warning("waiting to start transactions: %s", error)
                time.sleep(delay)
                delay = min(LAST_RETRY_S, delay * 2)

    async def publish(
        self, batch_id: int, messages: Iterable[Outgoing], after: Iterable[Outgoing] = ()
    ) -> None:
        """Commit the batch's outputs (`messages` and `after`: in one transaction, neither is visible
        without the other) with its offsets in one transaction, retrying until it commits; a batch whose
        partitions moved meanwhile is given up (its new owner answers it)."""
        outgoing = [*messages, *after]
        consumed = bool(self._ledger.offsets_after(batch_id))
        delay = FIRST_RETRY_S
        while True:
            # Again at every attempt: partitions revoked meanwhile leave the transaction's offsets.
            offsets = self._ledger.offsets_after(batch_id)
            if consumed and not offsets:
                log.info("transaction given up, its partitions moved batch=%d", batch_id)
                return
            try:
                await asyncio.to_thread(self._transact, outgoing, offsets)
                break
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                exit_if_fatal(error, "transactional")
                log.warning("transaction failed, trying again batch=%d error=%s", batch_id, error)
                self._health.waiting(DEPENDENCY, error.str())
                await asyncio.sleep(delay)
                delay = min(LAST_RETRY_S, delay * 2)
        if self._health.waits_for(DEPENDENCY):
            self._health.recovered(DEPENDENCY)
        self._ledger.committed(offsets)
        self._ledger.finish(batch_id)

    def _transact(self, messages: list[Outgoing], offsets: dict[tuple[str, int], int]) -> None:
        producer = self._producer
        producer.begin_transaction()
        try:
            for topic, key, value, partition, timestamp_ms in messages:
                while True:
                    try:
                        producer.produce(topic, value, key, partition, timestamp=timestamp_ms)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if offsets:
                positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                producer.send_offsets_to_transaction(positions, self._group_metadata(), 30)
            self._commit()
        except KafkaException as exception:
            if exception.args[0].txn_requires_abort():
                producer.abort_transaction(30)
            raise

    def _commit(self) -> None:
        """Commit, trying again while the error says the commit itself may be retried."""
        while True:
            try:
                self._producer.commit_transaction(60)
                return
            except KafkaException as exception:
                if not exception.args[0].retriable():
                    raise
                time.sleep(FIRST_RETRY_S)

    def undelivered(self) -> int:
        """Nothing stays undelivered between transactions."""
        return 0

    def close(self, timeout_s: float = 30) -> int:
        """Flush what is left (nothing, between transactions)."""
        self._producer.flush(timeout_s)
        return 0
