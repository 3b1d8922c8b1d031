"""A worker joining while requests flow: every request is answered, none twice."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from rig.clients import produce_requests, synthetic_requests
from rig.routing import set_golden_event
from tests.e2e.conftest import consume, deploy, eventually, route, worker_group_members, workers

pytestmark = pytest.mark.e2e
RATE_PER_S = 400


def until_set(
    stop: threading.Event, requests: Iterable[dict[str, Any]], sent: list[str]
) -> Iterator[dict[str, Any]]:
    """The requests, until `stop` is set; each one's id is noted in `sent`."""
    for request in requests:
        if stop.is_set():
            return
        sent.append(request["request_id"])
        yield request


def test_a_worker_joining_mid_stream_repeats_and_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    deployment = deploy(
        tmp_path_factory.mktemp("rebalance"),
        {"golden": "golden"},
        rounds=20,
        world_seed=31,
        world_entities=2_000,
        world_days=2,
    )
    settings = deployment.settings
    topic = settings.topic("predictions")
    route(deployment, set_golden_event(deployment.versions["golden"], actor="test"))
    stop, sent = threading.Event(), []
    requests = until_set(stop, synthetic_requests(settings, 100_000, seed=3), sent)
    producer = threading.Thread(target=produce_requests, args=(settings, requests, RATE_PER_S))

    with workers(deployment, count=1, loglevel="info") as first:
        producer.start()
        try:
            consume(settings, topic, "Prediction", 1_000, timeout_s=120, processes=first)
            with workers(deployment, count=1, name="second", loglevel="info") as second:
                eventually(
                    lambda: [len(m) > 0 for m in worker_group_members(settings)] == [True, True],
                    timeout_s=120,
                    what="the second worker to take its share of the partitions",
                )
                # Keep the requests flowing a while after the rebalance, on both workers.
                consume(
                    settings,
                    topic,
                    "Prediction",
                    len(sent) + 2 * RATE_PER_S,
                    timeout_s=60,
                    processes=[*first, *second],
                )
                stop.set()
                producer.join()
                consume(settings, topic, "Prediction", len(sent), timeout_s=60, processes=[*first, *second])
                predictions = consume(settings, topic, "Prediction", len(sent) + 1, timeout_s=5)
        finally:
            stop.set()
            producer.join()

    answers = collections.Counter(p["request_id"] for p in predictions)
    repeated = sum(count - 1 for count in answers.values())
    print(f"{len(sent)} requests, {len(predictions)} predictions, {repeated} repeated")
    assert set(answers) == set(sent), "every request is answered"
    assert repeated == 0, "the rebalance repeats no work"
