"""Create the rig's topics on a Kafka cluster, idempotently, and refuse existing ones that are wrong."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rig.config import TOPIC_NAMES, RigSettings
from rig.errors import TopicError

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

# Routing state is the latest value per key, so the control topic keeps only that.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    "control": {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
    "dlq": {"retention.ms": str(14 * 24 * 3600 * 1000)},
    # The join's state: the latest entry per request id; a deleted entry's tombstone goes after a day.
    # Kafka never compacts a partition's active segment, which rolls at 1 GiB or after 7 days by default:
    # a restore would read up to a week of every change (a quiet worker's 7 days against its 6 h of
    # state). Rolled hourly, what a restore reads beyond one record per entry is the last hour's.
    "join-changelog": {
        "cleanup.policy": "compact",
        "delete.retention.ms": str(24 * 3600 * 1000),
        "segment.ms": str(3600 * 1000),
    },
}


SINGLE_PARTITION = {
    "control": "one order of routing changes for every worker",
    "joined": "one promoter sees every outcome",
}
"""Topics of one partition, and why."""


class MisconfiguredTopic(TopicError):
    """A rig topic exists with a partition count or cleanup policy the rig cannot work with; the
    message says how to fix each. Waiting does not help: a worker refuses to start."""


def ensure_topics(
    settings: RigSettings, names: Iterable[str] = TOPIC_NAMES, timeout_s: float = 30
) -> list[str]:
    """Create the named rig topics that do not exist yet, after checking those that do.

    A topic a producer auto-created (the broker's default partitions, not compacted) would let
    workers apply routing changes in different orders and delete the golden record after the
    retention time: nothing is created while an existing topic is wrong.

    Args:
        settings: where the cluster is and how topics are named and partitioned.
        names: short topic names (see `rig.config.TOPIC_NAMES`).
        timeout_s: how long to wait for the cluster to answer.

    Returns:
        Full names of the topics that were created by this call.

    Raises:
        MisconfiguredTopic: an existing topic has the wrong partition count or cleanup policy.
        TopicError: the cluster refused to create a topic for a reason other than "already exists",
            or did not describe an existing one.
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    existing = admin.list_topics(timeout=timeout_s).topics
    present = [name for name in names if settings.topic(name) in existing]
    missing = [name for name in names if settings.topic(name) not in existing]
    _refuse_misconfigured(admin, settings, _partition_counts(admin, settings, present, timeout_s), timeout_s)
    wanted = [
        NewTopic(
            settings.topic(name),
            num_partitions=1 if name in SINGLE_PARTITION else settings.topic_partitions,
            replication_factor=-1,
            config=TOPIC_CONFIGS.get(name, {}),
        )
        for name in missing
    ]
    if not wanted:
        return []
    short_names = {settings.topic(name): name for name in missing}
    created, raced = [], []
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result()
            created.append(topic)
        except Exception as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raced.append(short_names[topic])
                continue
            raise TopicError(f"could not create topic {topic}: {exc}") from exc
    if raced:
        # Created by another client since the listing (a producer's auto-creation, another worker):
        # checked too, once the cluster's metadata shows them.
        _refuse_misconfigured(
            admin, settings, _partition_counts(admin, settings, raced, timeout_s), timeout_s
        )
    return created


def _partition_counts(
    admin: AdminClient, settings: RigSettings, names: list[str], timeout_s: float
) -> dict[str, int]:
    """Short name -> partition count of existing topics, waiting up to `timeout_s` for the cluster's
    metadata to show them with their partitions (it lags behind a creation)."""
    if not names:
        return {}
    deadline = time.monotonic() + timeout_s
    while True:
        topics = admin.list_topics(timeout=timeout_s).topics
        shown = [
            name
            for name in names
            if (topic := topics.get(settings.topic(name))) is not None
            and topic.error is None
            and topic.partitions
        ]
        if len(shown) == len(names):
            return {name: len(topics[settings.topic(name)].partitions) for name in names}
        if time.monotonic() >= deadline:
            hidden = sorted(set(names) - set(shown))
            raise TopicError(f"topics {hidden} exist but the cluster's metadata does not show them")
        time.sleep(0.1)


def _refuse_misconfigured(
    admin: AdminClient, settings: RigSettings, partitions: dict[str, int], timeout_s: float
) -> None:
    """Raise MisconfiguredTopic naming what is wrong with these existing rig topics (short name ->
    partition count) and how to fix each: the partition count of the SINGLE_PARTITION topics, the
    cleanup policy of those that set one."""
    from confluent_kafka.admin import ConfigResource

    bootstrap = settings.kafka_bootstrap
    problems = []
    for name, count in partitions.items():
        if name in SINGLE_PARTITION and count != 1:
            topic = settings.topic(name)
            again = (
                ", then route the golden again (`rig promote <version>`, `rig experiment start ...`)"
                if name == "control"
                else ""
            )
            problems.append(
                f"topic {topic} has {count} partitions, the rig needs 1 ({SINGLE_PARTITION[name]}); "
                f"Kafka cannot remove partitions: stop the workers, delete it (`kafka-topics.sh "
                f"--bootstrap-server {bootstrap} --delete --topic {topic}`) "
                f"and run `rig topics create`{again}"
            )
    policies = {
        settings.topic(name): TOPIC_CONFIGS[name]["cleanup.policy"]
        for name in partitions
        if "cleanup.policy" in TOPIC_CONFIGS.get(name, {})
    }
    resources = [ConfigResource(ConfigResource.Type.TOPIC, topic) for topic in policies]
    described = admin.describe_configs(resources, request_timeout=timeout_s) if resources else {}
    for resource, future in described.items():
        try:
            policy = future.result()["cleanup.policy"].value
        except Exception as exc:
            raise TopicError(f"could not describe topic {resource.name}: {exc}") from exc
        wanted = policies[resource.name]
        if policy != wanted:
            problems.append(
                f"topic {resource.name} has cleanup.policy={policy}, the rig needs {wanted} (the latest "
                f"value of every key must stay): `kafka-configs.sh --bootstrap-server {bootstrap} --alter "
                f"--entity-type topics --entity-name {resource.name} --add-config cleanup.policy={wanted}`"
            )
    if problems:
        raise MisconfiguredTopic("; ".join(problems))


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
