"""The aiohttp application behind a Faust app's web server, for aiohttp's test client."""

from __future__ import annotations

import faust
from aiohttp.web import Application
from faust.web.drivers.aiohttp import Web


def aiohttp_app(app: faust.App) -> Application:
    """`app.web.web_app`: Faust types `app.web` as its base Web, the workers run its aiohttp driver."""
    web = app.web
    assert isinstance(web, Web), f"the workers serve with Faust's aiohttp driver, not {type(web)}"
    return web.web_app
