"""The explain agent and endpoint: explanations of the golden's (or any model's) score for a request.

Requests on the explain topic (the Request schema; the predict agent adds those where golden and a
challenger disagree) are explained off the prediction path and published to the explanations topic.
`GET /explain/<entity_id>/?model=<version>` explains a fresh request for an entity over HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from rig.codec import Codec, Rejected
from rig.config import RigSettings
from rig.errors import RigError
from streams.runtime import Runtime

log = logging.getLogger(__name__)


def install_explainer(
    app: faust.App, settings: RigSettings, get_runtime: Callable[[], Awaitable[Runtime]]
) -> None:
    """Add the explain agent and the HTTP endpoint to `app`."""
    request_codec = Codec("Request", registry_url=settings.schema_registry_url, allow_json=True)
    explanation_codec = Codec("Explanation", registry_url=settings.schema_registry_url)
    asks = app.topic(settings.topic("explain"), key_serializer="raw", value_serializer="raw")
    explanations = app.topic(settings.topic("explanations"), key_serializer="raw", value_serializer="raw")

    async def explain(runtime: Runtime, request: dict[str, Any], version: str | None) -> dict[str, Any]:
        model = version or runtime.routing.golden
        if model is None or runtime.transform is None or runtime.explanations is None:
            raise RigError("no golden model is routed")
        return await asyncio.to_thread(runtime.explanations.explain, request, model, runtime.transform)

    @app.agent(asks)
    async def explain_requests(stream):  # type: ignore[no-untyped-def]
        """Explain each asked request with the golden model and publish the explanation."""
        runtime = await get_runtime()
        async for event in stream.events():
            request = request_codec.decode(event.message.value or b"")
            if isinstance(request, Rejected):
                log.warning(
                    "explain request rejected offset=%s reason=%s", event.message.offset, request.reason
                )
                continue
            try:
                record = await explain(runtime, request, None)
            except RigError as error:
                log.warning("not explained request_id=%s reason=%s", request["request_id"], error)
                continue
            await explanations.send(key=request["entity_id"].encode(), value=explanation_codec.encode(record))

    @app.page("/explain/{entity_id}/")
    async def explain_entity(web, request, entity_id: str):  # type: ignore[no-untyped-def]
        """Explain the golden's (or `?model=`) score for this entity now."""
        runtime = await get_runtime()
        ask = {
            "request_id": f"http-{uuid.uuid4().hex}",
            "entity_id": entity_id,
            "event_time": int(time.time() * 1000),
            "features": {},
            "context": {},
        }
        try:
            record = await explain(runtime, ask, request.query.get("model"))
        except RigError as error:
            return web.json({"error": str(error)}, status=422)
        return web.json(record)
