"""Model warmers: a model is `ready` only when loaded, verified and warmed, and a new golden meets
a warm cache, so a promotion causes no cold-start spike.

Warming a version: load it (checksum verified by the registry), predict a warm-up batch (first calls
allocate XGBoost's buffers and page the trees in), and, for a golden to be, replay the most recent
requests from the requests topic through it to pre-fill the prediction cache. Only then is the new
routing applied, in one reference assignment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rig.cache.store import PredictionCache
from rig.config import RigSettings
from rig.errors import SchemaRegistryUnavailable
from rig.features.online_reader import OnlineReader
from rig.transform.fitted import FittedTransform
from rig.wire.codec import Codec, Rejected
from rig.wire.records import Request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmReport:
    """What warming one version did."""

    version: str
    warm_up_rows: int
    cached_rows: int
    seconds: float


def recent_requests(
    settings: RigSettings, count: int, codec: Codec[Request] | None = None, timeout_s: float = 10
) -> list[Request]:
    """The last `count` requests of the requests topic (spread over its partitions), decoded with
    `codec` (the deployment's request codec; the default entity's when None).

    Reads by offset with a group-less consumer, so it never disturbs the workers' consumer group.
    """
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic("requests")
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": "rig-warmer", "enable.auto.commit": False}
    )
    codec = codec or Codec(Request, registry_url=settings.schema_registry_url, allow_json=True)
    try:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
        per_partition = max(1, count // max(len(partitions), 1))
        assignment, wanted = [], 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            start = max(low, high - per_partition)
            if high > start:
                assignment.append(TopicPartition(topic, p, start))
                wanted += high - start
        if not assignment:
            return []
        consumer.assign(assignment)
        requests: list[Request] = []
        read, deadline = 0, time.monotonic() + timeout_s
        while read < wanted and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                read += 1
                try:
                    decoded = codec.decode(message.value() or b"")
                except SchemaRegistryUnavailable:
                    continue  # the replay only pre-fills the cache: a routing change never waits for it
                if not isinstance(decoded, Rejected):
                    requests.append(decoded)
        return requests
    finally:
        consumer.close()


def warm(
    version: str,
    predict: Callable[[np.ndarray], np.ndarray],
    transform: FittedTransform,
    reader: OnlineReader,
    requests: list[Request],
    cache: PredictionCache | None,
    warm_up_rows: int = 256,
) -> WarmReport:
    """Warm `version` on recent traffic: a warm-up batch, then the cache pre-fill.

    Args:
        predict: the loaded model's predict function on `transform`'s output (all its columns).
        requests: recent requests to replay (their entities' current features are read again).
        cache: where the replayed scores go (skipped when None).
    """
    started = time.perf_counter()
    if not requests:
        width = len(transform.output_columns)
        predict(np.zeros((warm_up_rows, width), dtype=np.float32))  # warm the model even with no traffic
        return WarmReport(version, warm_up_rows, 0, time.perf_counter() - started)
    entity_ids = [r.entity_id for r in requests]
    online = reader.read(entity_ids)
    result = transform.transform(online.columns, now=[r.event_time for r in requests])
    ok = np.flatnonzero(result.row_ok)
    values = result.values[ok]
    predict(values[:warm_up_rows])
    scores = predict(values)
    cached = 0
    if cache is not None and ok.size:
        ids = np.array(entity_ids)[ok].tolist()
        cache.put_many(version, transform.version, values, ids, np.asarray(scores, dtype=np.float64))
        cached = int(ok.size)
    return WarmReport(version, min(warm_up_rows, int(ok.size)), cached, time.perf_counter() - started)
