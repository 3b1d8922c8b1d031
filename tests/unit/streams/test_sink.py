"""A fatal producer error ends the worker, from whichever thread meets it."""

from __future__ import annotations

import subprocess
import sys

from streams.plane.sink import FATAL_EXIT_CODE
from tests.conftest import REPO

MEETS_A_FATAL_ERROR_IN_A_THREAD = """
import threading
from confluent_kafka import KafkaError
from streams.plane.sink import exit_if_fatal

retriable = KafkaError(KafkaError._TRANSPORT, "broker away", retriable=True)
fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
for error in (retriable, fatal):  # as a delivery report's error, in the producer's poll thread
    thread = threading.Thread(target=exit_if_fatal, args=(error, "idempotent"))
    thread.start()
    thread.join()
    print("still running after", error.str(), flush=True)
"""


def test_a_fatal_error_in_the_producer_s_poll_thread_exits_the_process_and_a_retriable_one_does_not() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MEETS_A_FATAL_ERROR_IN_A_THREAD],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == FATAL_EXIT_CODE, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["still running after broker away"], result.stdout
    assert "fatal idempotent producer error, exiting for a restart: " in result.stderr, result.stderr
