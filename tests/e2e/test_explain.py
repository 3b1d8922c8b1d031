"""Explanations from a running worker: over HTTP, and automatically when golden and a challenger disagree."""

from __future__ import annotations

import math

import pytest

from rig.cli.clients import produce_requests
from rig.wire.records import Explanation, Prediction
from sim.deploy import start_worker
from sim.settings import WorldSettings
from sim.traffic import synthetic_requests
from tests.e2e.conftest import consume, deploy_with_shadow, eventually, get_json

pytestmark = pytest.mark.e2e
WEB_PORT = 16067


def test_explanations_over_http_and_for_disagreements_on_the_explanations_topic(tmp_path) -> None:
    deployment = deploy_with_shadow(
        tmp_path, "worse", WorldSettings(seed=61, entities=400, days=3), rounds=30
    )
    settings, versions = deployment.settings, deployment.versions
    worker = start_worker(
        settings, settings.home / "explain.log", web_port=WEB_PORT, env={"RIG_EXPLAIN_DISAGREEMENT": "0.2"}
    )
    try:
        entity = deployment.world.entity_ids[7]
        explanation = eventually(
            lambda: get_json(f"http://127.0.0.1:{WEB_PORT}/explain/{entity}/"), 120, "the worker"
        )
        assert explanation["model_version"] == versions["golden"] and explanation["entity_id"] == entity
        shap = explanation["shap"]
        assert shap["bias"] + sum(shap["contributions"].values()) == pytest.approx(shap["margin"], abs=1e-4)
        assert shap["score"] == pytest.approx(1 / (1 + math.exp(-shap["margin"])), abs=1e-6)
        assert explanation["anchor"]["rule"] and 0 <= explanation["anchor"]["precision"] <= 1

        requests = list(synthetic_requests(deployment.world_settings, 2_000, seed=8))
        assert produce_requests(settings, requests) == 2_000
        predictions = consume(settings, settings.topic("predictions"), Prediction, 2_000, processes=[worker])
        disagreeing = {
            p.request_id
            for p in predictions
            if any(abs(e.score - p.golden.score) > 0.2 for e in p.experiments)
        }
        assert disagreeing, "the worse shadow disagrees with the golden on some requests"
        explained = consume(settings, settings.topic("explanations"), Explanation, 1, processes=[worker])
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert explained and {e.request_id for e in explained} <= disagreeing
    assert all(e.model_version == versions["golden"] for e in explained)
