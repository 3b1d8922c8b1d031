"""The broker stopped for 15 s under a running worker: every request answered, none dead-lettered."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from streams.health import STALL_EXIT_CODE
from tests.faults.conftest import Answers, OwnKafka, Stack, Traffic, deploy_stack, wait_ready
from tests.support.ports import free_port

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    broker = OwnKafka(tmp_path_factory.mktemp("kafka"))
    broker.up()
    try:
        yield broker
    finally:
        broker.down(purge=True)


def broker_stopped_for_15_s_under_traffic(stack: Stack, own_kafka: OwnKafka) -> Traffic:
    """4,000 requests at 200/s, the broker stopped for 15 s after the first 1,000; returns once all
    are sent."""
    traffic = Traffic(stack, count=4_000, rate_per_s=200, seed=7).start()
    traffic.wait_sent(1_000)
    own_kafka.down()
    time.sleep(15)
    own_kafka.up()
    traffic.join()
    return traffic


def test_the_broker_stopped_for_15_s_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, own_kafka: OwnKafka
) -> None:
    stack = deploy_stack(tmp_path_factory.mktemp("broker"), kafka_bootstrap=own_kafka.bootstrap)
    answers = Answers(stack.settings).start()
    port = free_port()
    try:
        with stack.worker("broker-down", web_port=port) as worker:
            wait_ready(port, worker)
            traffic = broker_stopped_for_15_s_under_traffic(stack, own_kafka)
            answers.assert_complete(traffic, "the broker stopped for 15 s", timeout_s=240)
            wait_ready(port, worker)
            assert worker.poll() is None, "the worker went on by itself"
    finally:
        answers.stop()


def test_exactly_once_the_broker_stopped_for_15_s_loses_and_repeats_nothing(
    tmp_path_factory: pytest.TempPathFactory, own_kafka: OwnKafka
) -> None:
    """Either the worker goes on by itself, or it exits for its supervisor to restart it (as this
    test then does): librdkafka's send_offsets_to_transaction can hang for good after a broker restart
    (confluentinc/librdkafka#5456, #5511, open), and the stalled worker exits. Before, it went on
    forever with nothing answered: a transaction left open made every later one fail ("not valid in
    state InTransaction"), and a wait left behind by a given-up batch explained the stall."""
    stack = deploy_stack(tmp_path_factory.mktemp("broker-eos"), kafka_bootstrap=own_kafka.bootstrap)
    answers = Answers(stack.settings).start()  # read_committed: an aborted transaction shows nothing
    eos = {"RIG_PROCESSING_GUARANTEE": "exactly_once", "RIG_STALL_EXIT_S": "30"}
    port = free_port()
    try:
        with stack.worker("broker-down-eos", web_port=port, env=eos) as worker:
            wait_ready(port, worker)
            traffic = broker_stopped_for_15_s_under_traffic(stack, own_kafka)
            deadline = time.monotonic() + 180
            while answers.wait_for(traffic.ids, timeout_s=1) and worker.poll() is None:
                assert time.monotonic() < deadline, "neither answered every request nor exited"
            exit_code = worker.poll()
        if exit_code is not None:
            assert exit_code == STALL_EXIT_CODE, f"exited with {exit_code}"
            print("the worker exited for a restart; a replacement takes over")
            with stack.worker("broker-down-eos-restarted", env=eos):
                repeats = answers.assert_complete(
                    traffic, "the broker stopped for 15 s (exactly once, restarted)"
                )
        else:
            repeats = answers.assert_complete(traffic, "the broker stopped for 15 s (exactly once)")
        assert repeats == 0, "a read_committed reader sees each prediction once"
    finally:
        answers.stop()
