"""Intake fuzzed with Hypothesis: whatever arrives, decoding never raises, and every message becomes
one request or one dead letter with a reason, each of which can be written again.

The bench variant (bench/bench_intake_fuzz.py) runs the same property on 100,000 and more examples.
"""

from __future__ import annotations

from hypothesis import given, settings

from rig.wire.requests import KeySpec
from tests.unit.wire.intake_messages import messages, take_one_in


@settings(max_examples=2000, deadline=None, database=None)
@given(messages())
def test_every_message_becomes_a_request_or_a_dead_letter_with_a_reason(
    message: tuple[KeySpec, bytes],
) -> None:
    take_one_in(*message)
