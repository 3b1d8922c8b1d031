"""Create the rig's topics on a Kafka cluster, idempotently."""

from __future__ import annotations

from collections.abc import Iterable

from rig.config import TOPIC_NAMES, RigSettings
from rig.errors import TopicError

# Routing state is the latest value per key, so the control topic keeps only that.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "control": {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
    "dlq": {"retention.ms": str(14 * 24 * 3600 * 1000)},
    # The join's state: the latest entry per request id; a deleted entry's tombstone goes after a day.
    "join-changelog": {"cleanup.policy": "compact", "delete.retention.ms": str(24 * 3600 * 1000)},
}


# Control: one order of routing changes for every worker. Joined: one promoter sees every outcome.
SINGLE_PARTITION = ("control", "joined")


def ensure_topics(
    settings: RigSettings, names: Iterable[str] = TOPIC_NAMES, timeout_s: float = 30
) -> list[str]:
    """Create the named rig topics that do not exist yet.

    Args:
        settings: where the cluster is and how topics are named and partitioned.
        names: short topic names (see `rig.config.TOPIC_NAMES`).
        timeout_s: how long to wait for the cluster to answer.

    Returns:
        Full names of the topics that were created by this call.

    Raises:
        TopicError: the cluster refused to create a topic for a reason other than "already exists".
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(
            settings.topic(name),
            num_partitions=1 if name in SINGLE_PARTITION else settings.topic_partitions,
            replication_factor=-1,
            config=TOPIC_CONFIGS.get(name, {}),
        )
        for name in names
        if settings.topic(name) not in existing
    ]
    if not wanted:
        return []
    created = []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(topic)
        except Exception as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise TopicError(f"could not create topic {topic}: {exc}") from exc
    return created


def topic_exists(settings: RigSettings, name: str, timeout_s: float = 10) -> bool:
    """Whether the rig topic `name` (short name) exists on the cluster.

    Raises:
        TopicError: the cluster did not answer within `timeout_s`.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        topics = AdminClient(settings.kafka_client_config()).list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise TopicError(f"the cluster at {settings.kafka_bootstrap} did not answer: {exc}") from exc
    return settings.topic(name) in topics
