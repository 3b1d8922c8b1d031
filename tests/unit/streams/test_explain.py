"""The explain endpoint: `?model=` names a registered version or is refused before it names a file,
and explanations run on a bounded pool of their own."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xgboost
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from rig.config import RigSettings
from rig.errors import RegistryError
from rig.models.registry import ModelRegistry
from streams.app import make_app
from streams.explain import BoundedPool, ExplainConsumer, explain_answer, install_explain_endpoint
from tests.support.web import aiohttp_app


def save_model(root: Path) -> Path:
    x = np.random.default_rng(0).normal(size=(50, 2))
    booster = xgboost.train({"objective": "binary:logistic"}, xgboost.DMatrix(x, label=x[:, 0] > 0), 2)
    meta = ModelRegistry(root).save(booster, "evil", ["f0", "f1"])
    return root / meta.version


def runtime_with(registry: Any) -> Any:
    """What the endpoint reads of the worker's runtime: its registry, and nothing routed or served."""
    return SimpleNamespace(
        registry=registry, serving=None, explanations=None, routing=SimpleNamespace(golden=None)
    )


@pytest.mark.parametrize("name", ["absolute", "relative"])
def test_a_model_that_is_a_path_is_refused_with_404(tmp_path: Path, name: str) -> None:
    target = save_model(tmp_path / "elsewhere")
    model = str(target) if name == "absolute" else f"../elsewhere/{target.name}"
    runtime = runtime_with(ModelRegistry(tmp_path / "models"))

    body, status = explain_answer(runtime, "ent-1", model)

    assert status == 404
    assert "is not a model version" in body["error"]


def test_an_unregistered_version_is_refused_with_404(tmp_path: Path) -> None:
    body, status = explain_answer(runtime_with(ModelRegistry(tmp_path)), "ent-1", "risk.7")
    assert status == 404
    assert "unknown model version 'risk.7'" in body["error"]


def test_a_registered_version_that_cannot_be_explained_now_is_a_422(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    version = save_model(tmp_path).name
    body, status = explain_answer(runtime_with(registry), "ent-1", version)
    assert status == 422
    assert body == {"error": "no golden model is routed"}


def test_a_call_beyond_the_pools_threads_and_queue_is_refused_until_one_ends() -> None:
    release = threading.Event()

    async def scenario() -> tuple[bool, list[object]]:
        pool = BoundedPool(threads=1, queue=1, name="test-explain")
        try:
            running, waiting = pool.submit(release.wait), pool.submit(release.wait)
            refused = pool.submit(release.wait) is None
            release.set()
            assert running is not None and waiting is not None
            results: list[object] = [await running, await waiting]
            later = pool.submit(len, "abc")
            assert later is not None
            return refused, [*results, await later]
        finally:
            pool.shutdown()

    refused, results = asyncio.run(scenario())
    assert refused, "the third call, with one thread busy and one call waiting, is refused"
    assert results == [True, True, 3], "once they ended, a new call runs"


class BlockingRegistry:
    """A registry whose lookups wait until released (explanations that take a while), then refuse."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def folder(self, model: str) -> Path:
        self.entered.release()
        self.release.wait(timeout=30)
        raise RegistryError(f"unknown model version {model!r}")


def test_a_flood_of_explain_calls_gets_429_beyond_the_bound(tmp_path: Path) -> None:
    settings = RigSettings(home=tmp_path, web_explain_threads=2, web_explain_queue=0)
    app = make_app(settings)
    registry = BlockingRegistry()
    runtime = runtime_with(registry)

    async def get_runtime() -> Any:
        return runtime

    install_explain_endpoint(app, settings, get_runtime)
    app.web.init_server()

    async def flood() -> tuple[list[int], int]:
        async with TestClient(TestServer(aiohttp_app(app))) as client:
            busy = [asyncio.ensure_future(client.get("/explain/ent-1/?model=m.1")) for _ in range(2)]
            for _ in busy:  # both explanations are running on the pool's two threads
                assert await asyncio.to_thread(registry.entered.acquire, timeout=30)
            beyond = (await client.get("/explain/ent-1/?model=m.1")).status
            registry.release.set()
            return [(await response).status for response in busy], beyond

    answered, beyond = asyncio.run(flood())
    assert beyond == 429
    assert answered == [404, 404], "the calls within the bound were answered"


def explainer(max_s: float, backlogged: Any) -> ExplainConsumer:
    """An explainer that is never started: only its waiting is tested."""
    return ExplainConsumer(RigSettings(explain_yield_max_s=max_s), runtime_with(None), backlogged)


def test_an_explanation_waits_while_the_predict_path_has_a_backlog_then_goes_on() -> None:
    answers = iter([True, True, True, False])
    asked: list[bool] = []

    def backlogged() -> bool:
        asked.append(next(answers))
        return asked[-1]

    waited = explainer(60, backlogged).yield_to_requests()

    assert asked == [True, True, True, False], "asked again until the backlog was gone"
    assert 0 < waited < 60


def test_an_explanation_waits_no_longer_than_explain_yield_max_s() -> None:
    waited = explainer(0.2, lambda: True).yield_to_requests()
    assert waited >= 0.2


def test_an_explanation_without_a_backlog_or_with_no_waiting_allowed_starts_at_once() -> None:
    asked: list[int] = []

    def no_backlog() -> bool:
        asked.append(1)
        return False

    assert explainer(60, no_backlog).yield_to_requests() < 1
    assert asked == [1]
    assert explainer(0, lambda: True).yield_to_requests() < 1


def test_a_stopping_explainer_stops_waiting() -> None:
    waiting = explainer(60, lambda: True)
    threading.Timer(0.1, waiting._stop.set).start()
    assert waiting.yield_to_requests() < 30


def test_a_wait_past_the_consumer_s_poll_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 240"):
        RigSettings(explain_yield_max_s=300)


def test_an_explain_request_waits_while_no_golden_is_routed_and_is_never_dropped() -> None:
    from rig.wire.codec import Codec
    from rig.wire.records import Request

    waiting = explainer(0, lambda: False)  # its runtime routes nothing and has no producer
    value = Codec(Request).encode(Request(request_id="r1", entity_id="e1", event_time=1))
    threading.Timer(0.5, waiting._stop.set).start()

    done = waiting._explain_until_done(value, offset=7)

    assert done is False, "stopped while waiting: its offset is not stored, a restart explains it"
