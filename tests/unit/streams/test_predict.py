"""Which requests the predict path sends to the explainer."""

from __future__ import annotations

from rig.serving.dispatch import TrafficLimiter
from rig.wire.records import ExperimentScore, ModelScore, Prediction, Request
from streams.predict import disagreements


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
