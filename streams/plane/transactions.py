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
import contextlib
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
        self._config = {
            "linger.ms": 5,
            **producer_config,
            "enable.idempotence": True,
            "transaction.timeout.ms": int(timeout_s * 1000),
            "allow.auto.create.topics": False,
        }
        self._group_id = group_id
        self.transactional_id = ""
        self._producer = self._new_producer()
        self._ledger = ledger
        self._health = health
        self._group_metadata = group_metadata
        self._open = False  # a transaction was begun and neither committed nor aborted yet

    def _new_producer(self) -> Producer:
        # Unique per producer: with the group metadata fencing zombies (KIP-447), the id need not be
        # stable across restarts, and two planes, processes or producers must never share one.
        self.transactional_id = (
            f"{self._group_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        return Producer({**self._config, "transactional.id": self.transactional_id})

    def _renew(self, error: KafkaError) -> None:
        """Replace a producer that met a fatal error with a new one. A broker away for longer than the
        transaction timeout is enough for one: the broker aborts the open transaction on its own and
        the producer's own abort then fails for good (INVALID_TXN_STATE). Nothing of the batch was
        committed, so a new producer takes it over; exiting the worker would only add a restart."""
        log.warning(
            "transactional producer %s failed for good (%s); a new one takes over",
            self.transactional_id,
            error,
        )
        old, self._producer, self._open = self._producer, self._new_producer(), False
        with contextlib.suppress(KafkaException):  # in a fatal state it may refuse even this
            old.purge()  # its messages belong to transactions that are aborted
        self.start()

    def start(self) -> TransactionalSink:
        """Register the transactional id with the cluster (waits for the broker); a fatal error here
        (e.g. the id not authorized) exits the worker."""
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
        consumed = self._ledger.consumed(batch_id)  # its partitions may be gone already
        delay = FIRST_RETRY_S
        while True:
            # Again at every attempt: partitions revoked meanwhile leave the transaction's offsets.
            offsets = self._ledger.offsets_after(batch_id)
            if consumed and not offsets:
                log.info("transaction given up, its partitions moved batch=%d", batch_id)
                self._health.forget(DEPENDENCY)  # a wait left behind would explain every later stall
                return
            try:
                await asyncio.to_thread(self._transact, outgoing, offsets)
                break
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                log.warning("transaction failed, trying again batch=%d error=%s", batch_id, error)
                if await asyncio.to_thread(self._stuck, error, outgoing):
                    # Not Kafka away: no wait may explain the stall, or a stuck producer would keep the
                    # worker from exiting for a restart (RIG_STALL_EXIT_S) for good.
                    self._health.forget(DEPENDENCY)
                else:
                    self._health.waiting(DEPENDENCY, error.str())
                if error.fatal():
                    await asyncio.to_thread(self._renew, error)
                await asyncio.sleep(delay)
                delay = min(LAST_RETRY_S, delay * 2)
        if self._health.waits_for(DEPENDENCY):
            self._health.recovered(DEPENDENCY)
        self._ledger.committed(offsets)
        self._ledger.finish(batch_id)

    def _stuck(self, error: KafkaError, messages: list[Outgoing]) -> bool:
        """Whether a transactional call timed out in the client while the cluster answers: the producer
        is stuck, not the broker away. After a broker restart librdkafka can leave a transaction's
        request queued for a coordinator it never reaches again, and every later call times out
        ("retry call to resume"; confluentinc/librdkafka#5456, #5511)."""
        if error.code() != KafkaError._TIMED_OUT:
            return False
        try:  # one topic's metadata: any broker answers it, coordinator or not
            self._producer.list_topics(messages[0].topic if messages else None, timeout=5)
        except KafkaException:
            return False
        return True

    def _transact(self, messages: list[Outgoing], offsets: dict[tuple[str, int], int]) -> None:
        """One attempt: end what an earlier attempt left open, then begin, produce, send the offsets
        and commit. Any failure aborts the transaction; an abort that fails too (the broker away) is
        tried again before the next attempt, so a transaction is never left open: with one open,
        every later `begin_transaction` fails ("not valid in state InTransaction") for good."""
        producer = self._producer
        if self._open:
            self._abort()
        producer.begin_transaction()
        self._open = True
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
            self._open = False
        except KafkaException:
            try:
                self._abort()
            except KafkaException as abort_error:
                if abort_error.args[0].fatal():
                    raise  # the producer cannot go on: `publish` replaces it
                log.warning("transaction not aborted yet, tried again before the next: %s", abort_error)
            raise

    def _abort(self) -> None:
        """Abort the open transaction (librdkafka lets a timed-out abort be called again)."""
        try:
            self._producer.abort_transaction(30)
        except KafkaException as exception:
            if exception.args[0].code() != KafkaError._STATE:
                raise
            # no transaction to abort (it ended meanwhile): nothing is open
        self._open = False

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
