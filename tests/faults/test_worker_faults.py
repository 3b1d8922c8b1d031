"""Faults around one deployment on a Redis of its own: every request answered, none dead-lettered."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest

from rig.wire.topics import ensure_topics
from tests.faults.conftest import (
    Answers,
    OwnRedis,
    ReadinessWatch,
    Stack,
    Traffic,
    deploy_stack,
    pause,
    resume,
    wait_ready,
)
from tests.support.ports import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, own_redis: OwnRedis) -> Stack:
    return deploy_stack(tmp_path_factory.mktemp("faults"), redis_url=own_redis.url)


@pytest.fixture
def answers(stack: Stack) -> Iterator[Answers]:
    reader = Answers(stack.settings).start()
    yield reader
    reader.stop()


def test_redis_refusing_connections_for_10_s_loses_nothing(
    stack: Stack, own_redis: OwnRedis, answers: Answers
) -> None:
    port = free_port()
    with stack.worker("redis-down", web_port=port) as worker:
        wait_ready(port, worker)
        traffic = Traffic(stack, count=4_000, rate_per_s=250, seed=1).start()
        with ReadinessWatch(port) as watch:
            traffic.wait_sent(1_000)
            own_redis.shutdown(save=True)  # refuses connections; restarts on its own dump
            time.sleep(10)
            own_redis.start()
            traffic.join()
            answers.assert_complete(traffic, "Redis refusing connections for 10 s")
            wait_ready(port, worker)
        assert worker.poll() is None, "the worker went on by itself"
    assert watch.codes[0] == 200 and 503 in watch.codes and watch.codes[-1] == 200, watch.codes
    assert any("Redis" in reason for reason in watch.reasons), watch.reasons


def test_redis_hanging_for_10_s_loses_nothing(stack: Stack, own_redis: OwnRedis, answers: Answers) -> None:
    port = free_port()
    with stack.worker("redis-hang", web_port=port) as worker:
        wait_ready(port, worker)
        traffic = Traffic(stack, count=4_000, rate_per_s=250, seed=2).start()
        with ReadinessWatch(port) as watch:
            traffic.wait_sent(1_000)
            pause(own_redis.pid())  # accepts connections, answers nothing
            try:
                time.sleep(10)
            finally:
                resume(own_redis.pid())
            traffic.join()
            answers.assert_complete(traffic, "Redis hanging (SIGSTOP) for 10 s")
            wait_ready(port, worker)
        assert worker.poll() is None
    assert 503 in watch.codes and watch.codes[-1] == 200, watch.codes


def test_a_worker_killed_mid_stream_loses_nothing(stack: Stack, answers: Answers) -> None:
    traffic = Traffic(stack, count=3_000, rate_per_s=300, seed=3)
    with stack.worker("killed") as doomed:
        traffic.start()
        traffic.wait_sent(1_000)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
    with stack.worker("replacement"):
        traffic.join()
        repeats = answers.assert_complete(traffic, "kill -9 of the only worker, a replacement started")
    assert repeats < 3_000, "at most the batches the killed worker had not committed are repeated"


def test_a_second_worker_joining_and_leaving_mid_stream_repeats_nothing(
    stack: Stack, answers: Answers
) -> None:
    second_port = free_port()
    traffic = Traffic(stack, count=6_000, rate_per_s=300, seed=4)
    with stack.worker("first"):
        traffic.start()
        traffic.wait_sent(1_500)
        with stack.worker("second", web_port=second_port) as second:
            wait_ready(second_port, second)  # holds partitions
            traffic.wait_sent(4_000)
        traffic.join()
        repeats = answers.assert_complete(traffic, "a second worker joined, then left (SIGTERM)")
    assert repeats == 0, "cooperative rebalancing with commit-on-revoke redoes nothing"


def test_a_deleted_predictions_topic_holds_answers_until_it_exists_again(stack: Stack) -> None:
    from confluent_kafka.admin import AdminClient

    settings = stack.settings
    with stack.worker("topic-gone") as worker:
        before = Answers(settings).start()
        first = Traffic(stack, count=500, rate_per_s=500, seed=5).start()
        first.join()
        before.assert_complete(first, "before the predictions topic is deleted")
        before.stop()

        admin = AdminClient(settings.kafka_client_config())
        admin.delete_topics([settings.topic("predictions")])[settings.topic("predictions")].result()
        second = Traffic(stack, count=1_000, rate_per_s=200, seed=6).start()
        time.sleep(10)
        assert ensure_topics(settings, ["predictions"]) == [settings.topic("predictions")]
        after = Answers(settings).start()
        try:
            second.join()
            after.assert_complete(second, "predictions topic deleted for 10 s, then created again")
        finally:
            after.stop()
        assert worker.poll() is None


def test_a_routing_whose_model_file_is_still_syncing_is_applied_once_it_arrives(
    stack: Stack, answers: Answers
) -> None:
    from rig.cli.app import record_checksum
    from rig.models.registry import MODEL_FILE, ModelRegistry
    from rig.routing.control import publish_control, read_routing
    from rig.routing.table import start_experiment_event

    settings = stack.settings
    registry = ModelRegistry(settings.model_dir)
    golden = registry.meta(str(read_routing(settings).golden))
    late = registry.save(
        registry.load(golden.version),
        "late",
        golden.features,
        golden.transform_version,
        selection=golden.selection,
    )
    record_checksum(settings, late)
    model_file = registry.folder(late.version) / MODEL_FILE
    syncing = model_file.with_name("model.syncing")
    model_file.rename(syncing)  # registered, its file not on this worker's volume yet
    port = free_port()
    with stack.worker("routing-syncing", web_port=port) as worker:
        wait_ready(port, worker)
        traffic = Traffic(stack, count=4_000, rate_per_s=200, seed=8).start()
        with ReadinessWatch(port) as watch:
            traffic.wait_sent(500)
            publish_control(settings, start_experiment_event("late", late.version, "shadow", actor="test"))
            time.sleep(4)
            syncing.rename(model_file)
            traffic.join()
            answers.assert_complete(traffic, "a routing applied once its model file arrived")
            wait_ready(port, worker)
        assert worker.poll() is None
    scored_late = {i for i in traffic.ids if late.version in answers.models[i]}
    print(f"scored by {late.version}: {len(scored_late)} of {len(traffic.ids)}")
    assert scored_late, "the routing was applied once the file arrived (the old worker dropped it for good)"
    assert len(scored_late) < len(traffic.ids), "requests before it were answered with the routing in force"
    assert watch.codes[0] == 200 and 503 in watch.codes and watch.codes[-1] == 200, watch.codes
    assert any("model file missing" in reason for reason in watch.reasons), watch.reasons


def test_explain_requests_wait_for_redis_and_every_one_is_explained(
    stack: Stack, own_redis: OwnRedis
) -> None:
    from confluent_kafka import Consumer, Producer

    from rig.wire.codec import Codec
    from rig.wire.records import Explanation, Request
    from sim.traffic import synthetic_requests

    settings = stack.settings
    requests = list(synthetic_requests(stack.world, 20, seed=9))
    ids = {r.request_id for r in requests}
    port = free_port()
    with stack.worker("explain-redis-down", web_port=port) as worker:
        wait_ready(port, worker)
        own_redis.shutdown(save=True)
        try:
            producer = Producer(settings.kafka_producer_config())
            for request in requests:
                producer.produce(
                    settings.topic("explain"), Codec(Request).encode(request), request.entity_id.encode()
                )
            assert producer.flush(30) == 0
            time.sleep(6)  # the explainer meets Redis refusing connections
        finally:
            own_redis.start()
        consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"faults-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([settings.topic("explanations")])
        explained: set[str] = set()
        deadline = time.monotonic() + 120
        try:
            while not ids <= explained and time.monotonic() < deadline:
                for message in consumer.consume(100, timeout=0.5):
                    if not message.error():
                        record = Codec(Explanation).decode(message.value())
                        assert isinstance(record, Explanation)
                        explained.add(record.request_id)
        finally:
            consumer.close()
        assert worker.poll() is None
    print(f"explained {len(ids & explained)} of {len(ids)} explain requests sent while Redis was away")
    assert ids <= explained, f"{len(ids - explained)} explain requests never explained"
