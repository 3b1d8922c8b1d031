"""The broker stopped for 15 s under a running worker: every request answered, none dead-lettered."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.faults.conftest import Answers, OwnKafka, Traffic, deploy_stack, free_port, wait_ready

pytestmark = [pytest.mark.faults, pytest.mark.timeout(480)]


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path_factory.mktemp("kafka"))
    broker.up()
    try:
        yield broker
    finally:
        broker.down(purge=True)


def test_the_broker_stopped_for_15_s_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, own_kafka: OwnKafka
) -> None:
    stack = deploy_stack(tmp_path_factory.mktemp("broker"), kafka_bootstrap=own_kafka.bootstrap)
    answers = Answers(stack.settings).start()
    port = free_port()
    try:
        with stack.worker("broker-down", web_port=port) as worker:
            wait_ready(port, worker)
            traffic = Traffic(stack, count=4_000, rate_per_s=200, seed=7).start()
            traffic.wait_sent(1_000)
            own_kafka.down()
            time.sleep(15)
            own_kafka.up()
            traffic.join()
            answers.assert_complete(traffic, "the broker stopped for 15 s", timeout_s=240)
            wait_ready(port, worker)
            assert worker.poll() is None, "the worker went on by itself"
    finally:
        answers.stop()
