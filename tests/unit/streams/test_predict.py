"""Which requests the predict path sends to the explainer, and what a batch publishes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np

from rig.config import RigSettings
from rig.serving.dispatch import TrafficLimiter
from rig.wire.codec import Codec
from rig.wire.records import DeadLetter, ExperimentScore, ModelScore, Prediction, Request
from streams.predict import Answer, disagreements, outputs
from streams.runtime import Runtime


def answered(golden: float, *challengers: float) -> tuple[Request, Prediction]:
    request_id = f"r-{golden}-{'-'.join(map(str, challengers))}"
    request = Request(request_id=request_id, entity_id="e-1", event_time=1)
    prediction = Prediction(
        request_id=request_id,
        entity_id="e-1",
        event_time=1,
        score=golden,
        answered_by="risk.1",
        golden=ModelScore(model_version="risk.1", score=golden),
        experiments=[
            ExperimentScore(experiment=f"x{i}", model_version=f"risk.{i + 2}", mode="shadow", score=score)
            for i, score in enumerate(challengers)
        ],
        transform_version="t-1",
    )
    return request, prediction


def test_the_first_disagreements_go_to_the_explainer_as_many_as_its_rate_allows() -> None:
    now = [100.0]
    limiter = TrafficLimiter(lambda: now[0])
    pairs = [answered(0.1, 0.2), answered(0.1, 0.2, 0.9), answered(0.5), answered(0.9, 0.1)]
    pairs.append(answered(0.2, 0.6))
    requests, predictions = [r for r, _ in pairs], [p for _, p in pairs]

    first = disagreements(requests, predictions, 0.3, limiter, rate_per_s=2.0)
    assert [r.request_id for r in first] == [pairs[1][0].request_id, pairs[3][0].request_id]
    assert disagreements(requests, predictions, 0.3, limiter, rate_per_s=2.0) == []  # the bucket is empty
    now[0] += 0.5
    assert [r.request_id for r in disagreements(requests, predictions, 0.3, limiter, 2.0)] == [
        pairs[1][0].request_id
    ]
    now[0] += 10.0
    assert len(disagreements(requests, predictions, 0.3, limiter, 2.0)) == 2  # a burst of one second
    now[0] += 10.0
    assert disagreements(requests, predictions, 0.95, limiter, 2.0) == []  # none over that threshold
    assert limiter.available("explain", 2.0) == 2  # and no token taken for them


def test_an_explain_request_that_cannot_be_encoded_is_left_out_and_the_answers_published(
    settings: RigSettings,
) -> None:
    """Explanations are best effort: a request grown past max_message_bytes (a JSON request in Avro)
    must not end the worker at every try of its batch."""
    request, prediction = answered(0.1, 0.9)
    big = Request(
        request_id="r-big", entity_id="e-2", event_time=1, features={f"f{i}": 1.0 for i in range(50)}
    )
    serving = SimpleNamespace(request_codec=Codec(Request, max_bytes=200))
    runtime = cast(
        Runtime,
        SimpleNamespace(
            settings=settings,
            serving=serving,
            prediction_codec=Codec(Prediction),
            dead_letter_codec=Codec(DeadLetter),
        ),
    )

    published = list(outputs(runtime, Answer([prediction], [], [big, request], {}, received_ms=np.empty(0))))

    assert [out.topic for out in published] == [settings.topic("predictions"), settings.topic("explain")]
    assert published[1].key == b"e-1", "the request that fits is still sent"
