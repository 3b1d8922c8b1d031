"""A minimal Faust app for the broker round-trip test: uppercases values from one topic into another.

Run as `python -m faust -A tests.integration.faust_echo_app worker`; topics come from ECHO_IN/ECHO_OUT.
With ECHO_SILENCE_MARKER set, the worker makes its source partitions silent once it is ready, the
way Faust sometimes leaves a partition unread (see `streams.rebalance.StuckPartitions`), and then
creates that file.
"""

import os
from pathlib import Path

from rig.config import RigSettings
from streams.app import make_app

app = make_app(RigSettings(), app_id=os.environ["ECHO_APP_ID"], web_enabled=False, topic_partitions=2)
source = app.topic(os.environ["ECHO_IN"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def uppercase(stream):
    """Send every value, uppercased, to the sink topic under the same key."""
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value.upper())


if os.environ.get("ECHO_SILENCE_MARKER"):

    @app.timer(interval=0.5)
    async def silence_source_partitions() -> None:
        """Once: drop the source partitions from Faust's active set, without pausing them."""
        marker = Path(os.environ["ECHO_SILENCE_MARKER"])
        active = app.consumer._active_partitions  # type: ignore[attr-defined]
        sources = {tp for tp in app.consumer.assignment() if tp.topic == source.get_topic_name()}
        if marker.exists() or app.rebalancing or not active or not sources <= active:
            return
        active.difference_update(sources)
        marker.touch()
