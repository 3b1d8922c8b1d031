"""The naive baseline of bench/bench_pipeline.py: a Faust agent that answers ONE request at a time.

For each message it does what a first, straightforward implementation would do: decode it with
`rig.wire.codec`, read the features of its one entity through the Feast SDK (`FeastSdkReader` over
`FeatureStoreClient`), transform that one row with the deployment's stored `FittedTransform`, score
it with the golden model and every live shadow, one `inplace_predict` each, build the Prediction
record and `await` one send. No micro-batching, no thread pool, no fast Redis reader.

Models and routing are the deployment's own: the routing table is read once from the deployment's
control topic (`RIG_TOPIC_PREFIX`), the boosters and the transform from its registry (`RIG_HOME`).
Requests and predictions use topics under another prefix (`BENCH_NAIVE_TOPIC_PREFIX`, by default
`<RIG_TOPIC_PREFIX>naive.`), so this agent and `rig-worker` never see each other's messages.

Every prediction carries its own per-message stage timings (decode, enrich, transform, predict,
total, in ms), like the rig's per-batch `timings_ms`.

Run (the benchmark starts it): RIG_...=... .venv/bin/python bench/naive_agent.py worker --without-web
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from rig.config import RigSettings
from rig.wire.codec import Codec, Rejected
from rig.wire.records import ExperimentMode, ExperimentScore, ModelScore, Prediction, Request
from streams.app import make_app

NAIVE_PREFIX_ENV = "BENCH_NAIVE_TOPIC_PREFIX"

settings = RigSettings()
naive_prefix = os.environ.get(NAIVE_PREFIX_ENV, f"{settings.topic_prefix}naive.")
naive_topics = settings.model_copy(update={"topic_prefix": naive_prefix})
log = logging.getLogger("bench.naive_agent")
app = make_app(settings, app_id=f"{naive_prefix}agent", faust_kafka=True, web_enabled=False, web_port=6066)
requests_topic = app.topic(naive_topics.topic("requests"), key_serializer="raw", value_serializer="raw")
predictions_topic = app.topic(naive_topics.topic("predictions"), key_serializer="raw", value_serializer="raw")


@dataclass(frozen=True)
class ScoringModel:
    """One routed model: its booster and the transform output columns it reads."""

    version: str
    experiment: str | None
    mode: ExperimentMode | None
    booster: Any
    columns: np.ndarray

    def score_one(self, row: np.ndarray) -> float:
        """One `inplace_predict` on one row."""
        return float(self.booster.inplace_predict(row[:, self.columns])[0])


@dataclass(frozen=True)
class NaiveState:
    """What the agent loads once: codecs, the Feast SDK reader, the transform and the models."""

    request_codec: Codec[Request]
    prediction_codec: Codec[Prediction]
    reader: Any
    transform: Any
    golden: ScoringModel
    shadows: tuple[ScoringModel, ...]


def load_state() -> NaiveState:
    """Read the routing once, load its models and the golden's transform (blocking)."""
    from rig.features.online_reader import FeastSdkReader
    from rig.features.store import FeatureStoreClient
    from rig.models.dense import MODEL_NTHREAD
    from rig.models.registry import ModelRegistry
    from rig.routing.control import read_routing
    from rig.transform.model_inputs import column_index

    table = read_routing(settings)
    if table.golden is None:
        raise RuntimeError(f"no golden model on {settings.topic('control')}")
    registry = ModelRegistry(settings.model_dir)
    transform = registry.load_transform(registry.meta(table.golden).transform_version)

    def model(version: str, experiment: str | None, mode: ExperimentMode | None) -> ScoringModel:
        booster = registry.load(version)
        booster.set_param({"nthread": MODEL_NTHREAD})  # as the rig's backbone: one thread per model
        columns = column_index(transform.output_columns, registry.meta(version).features)
        return ScoringModel(version, experiment, mode, booster, columns)

    shadows = tuple(
        model(route.model_version, route.name, route.mode)
        for route in table.live_experiments
        if route.mode == "shadow"
    )
    registry_url = settings.schema_registry_url
    return NaiveState(
        request_codec=Codec(Request, registry_url=registry_url, allow_json=True),
        prediction_codec=Codec(Prediction, registry_url=registry_url),
        reader=FeastSdkReader(FeatureStoreClient(settings)),
        transform=transform,
        golden=model(table.golden, None, None),
        shadows=shadows,
    )


def answer(state: NaiveState, value: bytes) -> tuple[bytes, bytes] | None:
    """(key, encoded Prediction) for one request message, or None when it cannot be answered."""
    started = time.perf_counter()
    request = state.request_codec.decode(value)  # decode
    if isinstance(request, Rejected):
        log.warning("naive agent dropped a message reason=%s", request.reason)
        return None
    decoded = time.perf_counter()
    features = state.reader.read([request.entity_id])  # enrich: one entity, Feast SDK
    columns = {name: np.array(values, dtype=np.float64) for name, values in features.columns.items()}
    for name, override in request.features.items():
        if name in columns:
            columns[name][0] = override
    enriched = time.perf_counter()
    result = state.transform.transform(columns, now=[request.event_time])  # transform: one row
    if not result.row_ok[0]:
        log.warning("naive agent dropped request_id=%s reason=%s", request.request_id, result.reasons)
        return None
    transformed = time.perf_counter()
    row = result.values
    golden_score = state.golden.score_one(row)  # predict: one row, one model at a time
    experiments = [  # a shadow has its experiment and mode: only the golden has neither
        ExperimentScore(
            experiment=cast(str, m.experiment),
            model_version=m.version,
            mode=cast(ExperimentMode, m.mode),
            score=m.score_one(row),
        )
        for m in state.shadows
    ]
    predicted = time.perf_counter()
    record = Prediction(
        request_id=request.request_id,
        entity_id=request.entity_id,
        event_time=request.event_time,
        score=golden_score,
        answered_by=state.golden.version,
        golden=ModelScore(model_version=state.golden.version, score=golden_score),
        experiments=experiments,
        transform_version=state.transform.version,
        cache_hit=False,
        entity_found=bool(features.found[0]),
        timings_ms={
            "decode": round((decoded - started) * 1000, 3),
            "enrich": round((enriched - decoded) * 1000, 3),
            "transform": round((transformed - enriched) * 1000, 3),
            "predict": round((predicted - transformed) * 1000, 3),
            "total": round((time.perf_counter() - started) * 1000, 3),
        },
    )
    return request.entity_id.encode(), state.prediction_codec.encode(record)


@app.agent(requests_topic)
async def naive_predict(stream):
    """One request in, one prediction out: decode, enrich, transform, predict, await one send."""
    state = await asyncio.to_thread(load_state)
    log.warning(
        "naive agent ready golden=%s shadows=%s", state.golden.version, [m.version for m in state.shadows]
    )
    async for value in stream:
        answered = answer(state, value)
        if answered is not None:
            key, encoded = answered
            await predictions_topic.send(key=key, value=encoded)


if __name__ == "__main__":
    app.main()
