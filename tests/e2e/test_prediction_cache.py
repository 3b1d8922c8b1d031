"""The predict path with the prediction cache on (`RIG_CACHE_ENABLED`), on the real broker, Redis and Feast.

A request whose model input was scored before is answered from the cache; these tests check that such
an answer is the model's own (to the offline prediction), that a routing change serves the new golden's
scores and a purge empties the cache, and that no request is lost or answered twice on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import msgspec
import numpy as np
import pytest

from rig.cli.clients import produce_requests
from rig.routing.table import (
    purge_cache_event,
    set_golden_event,
    start_experiment_event,
    stop_experiment_event,
)
from rig.wire.records import Prediction, Request
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.e2e.conftest import (
    Deployment,
    consume,
    deploy_with_shadow,
    eventually,
    get_json,
    offline_scores,
    route,
    sample,
    scrape,
    workers,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e
REQUESTS = 1_500


@dataclass(frozen=True)
class CachedDeployment:
    """A deployment (golden + the shadow `better`) served by one worker with the cache on."""

    deployment: Deployment
    port: int
    requests: list[Request]
    """The requests every round repeats (under new request ids)."""


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CachedDeployment]:
    deployment = deploy_with_shadow(
        tmp_path_factory.mktemp("cache"), "better", WorldSettings(seed=33, entities=1_000, days=4)
    )
    port = free_port()
    requests = list(synthetic_requests(deployment.world_settings, REQUESTS, seed=9))
    with workers(deployment, web_ports=[port], env={"RIG_CACHE_ENABLED": "true"}) as processes:
        yield CachedDeployment(replace(deployment, processes=tuple(processes)), port, requests)


def answer_round(cached: CachedDeployment, name: str) -> dict[str, Prediction]:
    """Send the requests again under ids of round `name`; their predictions by original request id,
    each request answered once."""
    running = cached.deployment
    settings = running.settings
    again = {f"{name}-{r.request_id}": r for r in cached.requests}
    sent = [msgspec.structs.replace(r, request_id=request_id) for request_id, r in again.items()]
    assert produce_requests(settings, sent) == len(sent)
    answered = consume(
        settings,
        settings.topic("predictions"),
        Prediction,
        len(sent),
        timeout_s=60,
        where=lambda p: p.request_id in again,
        processes=running.processes,
    )
    ids = [p.request_id for p in answered]
    assert len(ids) == len(set(ids)) == len(sent), (
        f"{len(ids)} answers ({len(set(ids))} distinct) of {len(sent)}"
    )
    return {again[p.request_id].request_id: p for p in answered}


def experiment_scores(predictions: dict[str, Prediction], experiment: str) -> dict[str, float]:
    """Each request's score by the experiment."""
    return {
        request_id: next(e.score for e in p.experiments if e.experiment == experiment)
        for request_id, p in predictions.items()
    }


def serves_golden(cached: CachedDeployment, version: str) -> bool:
    """Whether the worker serves `version` as its golden (its routing in force, not only read)."""
    data = get_json(f"http://127.0.0.1:{cached.port}/dashboard/data")
    return bool(data["routing"]["golden"] == version)


def test_a_cached_answer_is_the_models_own_and_a_promotion_serves_the_new_goldens_scores(
    cached: CachedDeployment,
) -> None:
    running, v = cached.deployment, cached.deployment.versions
    entities = {r.request_id: r.entity_id for r in cached.requests}

    first = answer_round(cached, "first")
    # Every batch's scores are stored before the next batch is answered: the second round hits.
    second = answer_round(cached, "second")
    assert all(p.cache_hit for p in second.values()), "every repeated request is answered from the cache"
    for request_id, p in second.items():
        assert p.golden == first[request_id].golden, request_id
        assert p.experiments == first[request_id].experiments, request_id
    ordered = sorted(second)
    np.testing.assert_allclose(
        [second[r].golden.score for r in ordered],
        offline_scores(running, v["golden"], [entities[r] for r in ordered]),
        atol=1e-6,
        rtol=0,
    )
    samples, _ = scrape(cached.port)
    print(
        "cache lookups:",
        {tier: sample(samples, "rig_cache_lookups_total", result=tier) for tier in ("lru", "redis", "miss")},
    )
    assert sample(samples, "rig_cache_lookups_total", result="lru") >= 2 * REQUESTS, "both models' rows hit"

    # A promotion as the promoter makes it: the shadow's cached scores answer as the golden's now.
    route(
        running,
        set_golden_event(v["better"], actor="test"),
        stop_experiment_event("better", actor="test"),
        start_experiment_event("previous", v["golden"], "shadow", actor="test"),
    )
    eventually(
        lambda: serves_golden(cached, v["better"]), timeout_s=60, what="the worker to serve the new golden"
    )
    promoted = answer_round(cached, "promoted")
    assert all(p.golden.model_version == v["better"] for p in promoted.values())
    assert all(p.cache_hit for p in promoted.values()), "the shadow's scores were cached under its version"
    assert {r: p.golden.score for r, p in promoted.items()} == experiment_scores(second, "better")
    assert experiment_scores(promoted, "previous") == {r: p.golden.score for r, p in second.items()}
    np.testing.assert_allclose(
        [promoted[r].golden.score for r in ordered],
        offline_scores(running, v["better"], [entities[r] for r in ordered]),
        atol=1e-6,
        rtol=0,
    )


def test_after_a_purge_every_request_is_scored_again_to_the_same_answer(cached: CachedDeployment) -> None:
    answer_round(cached, "warm")
    before = answer_round(cached, "before-purge")
    assert all(p.cache_hit for p in before.values())

    route(cached.deployment, purge_cache_event(actor="test", reason="e2e"))
    eventually(
        lambda: sample(scrape(cached.port)[0], "rig_cache_lru_entries") == 0,
        timeout_s=60,
        what="the worker to purge its cache",
    )
    purged = answer_round(cached, "purged")
    # Within a round an entity's later requests may hit what its first one stored; its first cannot.
    hits: dict[str, list[bool]] = {}
    for r in cached.requests:
        hits.setdefault(r.entity_id, []).append(purged[r.request_id].cache_hit)
    assert all(not all(entity_hits) for entity_hits in hits.values()), (
        "no entity answered from the purged cache"
    )
    for request_id, p in purged.items():
        assert p.golden == before[request_id].golden and p.experiments == before[request_id].experiments
