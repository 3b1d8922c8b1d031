"""Faust wiring of the rig: topics, tables and agents that call into `rig/`."""

import os

# A worker is one process, so prometheus_client's multiprocess mode would only make every metric
# update write to a memory-mapped file (~3 % of the event loop at small batches). That mode is chosen
# once, when prometheus_client is first imported, from these variables, which `feast.metrics` sets on
# import and so passes on to every worker a Feast-using parent starts (the demo, the tests, benches).
for _variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
    os.environ.pop(_variable, None)
