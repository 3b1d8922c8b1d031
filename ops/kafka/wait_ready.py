"""Wait until a Kafka cluster answers a metadata request: `wait_ready.py BOOTSTRAP [TIMEOUT_S]`."""

import sys
import time

from confluent_kafka.admin import AdminClient


def main() -> int:
    bootstrap = sys.argv[1]
    deadline = time.monotonic() + float(sys.argv[2] if len(sys.argv) > 2 else 90)
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    last_error = ""
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=2)
            if metadata.brokers:
                return 0
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = str(exc)
        time.sleep(0.5)
    print(f"kafka: no metadata answer from {bootstrap}: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
