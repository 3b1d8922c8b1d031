"""The worker's web server: loopback unless told otherwise, and a bearer token when one is set."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import faust
from aiohttp.test_utils import TestClient, TestServer

from rig.config import RigSettings
from streams.app import make_app
from streams.health import install_health
from streams.plane.health import Health
from tests.support.web import aiohttp_app


def test_the_web_server_listens_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    assert make_app(RigSettings(home=tmp_path)).conf.web_bind == "127.0.0.1"
    anywhere = RigSettings(home=tmp_path, web_bind="0.0.0.0")
    assert make_app(anywhere).conf.web_bind == "0.0.0.0"


def worker_app(settings: RigSettings) -> faust.App:
    """An app with the health probes and one page of its own (`/ping/`)."""
    app = make_app(settings)
    install_health(app, settings, Health(), [])

    @app.page("/ping/")
    async def ping(web: Any, request: Any) -> Any:
        return web.json({"pong": True})

    app.web.init_server()
    return app


async def statuses(app: faust.App, paths: list[str], *headers: dict[str, str]) -> list[list[int]]:
    """The status of a GET of each path with each set of headers, through the app's own aiohttp
    application (on a loopback port)."""
    async with TestClient(TestServer(aiohttp_app(app))) as client:
        return [[(await client.get(path, headers=sent)).status for path in paths] for sent in headers]


def test_with_a_token_every_endpoint_but_the_probes_requires_it(tmp_path: Path) -> None:
    app = worker_app(RigSettings(home=tmp_path, web_token="s3cret"))  # type: ignore[arg-type]
    paths = ["/ping/", "/router/", "/healthz", "/readyz"]

    anonymous, wrong, bearer = asyncio.run(
        statuses(app, paths, {}, {"Authorization": "Bearer guess"}, {"Authorization": "Bearer s3cret"})
    )

    assert anonymous[:2] == [401, 401], "the rig's pages and Faust's own are guarded"
    assert anonymous[2:] == [200, 503], "the probes answer without a token (not ready: no partitions)"
    assert wrong[:2] == [401, 401]
    assert bearer == [200, 200, 200, 503]


def test_without_a_token_the_endpoints_answer_anyone(tmp_path: Path) -> None:
    app = worker_app(RigSettings(home=tmp_path))
    assert asyncio.run(statuses(app, ["/ping/"], {})) == [[200]]
