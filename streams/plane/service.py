"""A data plane for one Faust app: source, ledger, sink and health, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging

import faust
from mode import Service

from streams.plane.health import Health
from streams.plane.ledger import OffsetLedger
from streams.plane.sink import DeliveringSink
from streams.plane.source import BatchSource, SourceBatch, SourceSettings

log = logging.getLogger(__name__)


class Plane:
    """The source hands micro-batches to `batches`, an in-memory Faust channel an agent iterates
    over; the agent publishes each batch's outputs through `sink`, whose delivery reports finish the
    batch in the `ledger`; the source commits what the ledger says is finished."""

    def __init__(
        self, app: faust.App, client_config: dict[str, str], settings: SourceSettings, health: Health
    ) -> None:
        self.health = health
        self.ledger = OffsetLedger()
        self.batches = app.channel(maxsize=settings.max_open_batches + 1)
        self.sink = DeliveringSink(client_config, self.ledger.finish, health)
        self.source = BatchSource(client_config, settings, self.ledger, health, self._hand_over)
        self._loop: asyncio.AbstractEventLoop | None = None
        app.service(self._service())

    def _hand_over(self, batch: SourceBatch) -> None:
        """Called in the source's thread: put the batch on the agent's channel, in order."""
        assert self._loop is not None, "batches are handed over only after the plane started"
        asyncio.run_coroutine_threadsafe(self.batches.send(value=batch), self._loop).result()

    def _service(self) -> type[Service]:
        plane = self

        class DataPlane(Service):
            """Starts the sink, then the source, with the app; stops them in the other order."""

            async def on_start(self) -> None:
                plane._loop = asyncio.get_running_loop()
                plane.sink.start()
                plane.source.start()

            async def on_stop(self) -> None:
                await asyncio.to_thread(plane.source.stop)
                left = await asyncio.to_thread(plane.sink.close)
                if left:
                    log.warning(
                        "stopped with %d outputs undelivered (their requests were not committed)", left
                    )

        return DataPlane
