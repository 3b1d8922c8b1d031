"""Which requests the predict path sends to the explainer."""

from __future__ import annotations

import pytest

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


def test_a_batch_given_up_while_waiting_leaves_no_wait_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    from types import SimpleNamespace

    from rig.errors import FeatureStoreUnavailable
    from streams import predict
    from streams.plane.health import Health

    async def redis_away(runtime: object, sources: object) -> None:
        raise FeatureStoreUnavailable("Redis refused the connection")

    monkeypatch.setattr(predict, "answer", redis_away)
    owned = iter([True, False])  # the batch's partitions move while it waits
    now = [0.0]
    health = Health(lambda: now[0])
    health.assigned(1)
    plane = SimpleNamespace(source=SimpleNamespace(owns=lambda batch: next(owned)), health=health)
    runtime = SimpleNamespace(metrics=SimpleNamespace(consumed=lambda n: None))
    batch = SimpleNamespace(batch_id=1, messages=[])

    asyncio.run(predict.serve(runtime, plane, batch))  # type: ignore[arg-type]

    assert health.readiness().ready, health.readiness().reasons
    assert not health.waits_for(FeatureStoreUnavailable.dependency)
    health.stalled({"rig.requests[0]": 30.0})
    now[0] = 10.0
    assert health.unexplained_stall_s() == 10.0, "a wait nobody carries on explains no later stall"
