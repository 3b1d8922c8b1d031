"""A minimal Faust app for the broker round-trip test: uppercases values from one topic into another.

Run as `python -m faust -A tests.integration.faust_echo_app worker`; topics come from ECHO_IN/ECHO_OUT.
"""

import os

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
