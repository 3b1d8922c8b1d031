"""What the benchmarks share, one module per job; each `bench/bench_*.py` keeps only its own logic.

- `bench.support.kafka_io`: encoding requests, producing them (`Sender`, `connected_producer`, keyed
  with murmur2 for what the join reads), reading a topic in a thread (`TopicReader`), predictions back
  (`Collector`), waiting for a worker's first answer (`wait_ready`), partitions' end offsets.
- `bench.support.feedback`: requests with their outcomes (`traffic_with_outcomes`), predictions and
  joined rows read per request id (`Answers`, `JoinedRows`: what is missing, what is repeated).
- `bench.support.memory`: a process's RSS and peak from /proc, sampled over a run (`RssSampler`), a
  folder's size on disk.
- `bench.support.workers`: free ports, a worker's JSON endpoints, its log (tail, lines as they come).
- `bench.support.cpu`: CPU seconds from /proc (`cpu_seconds`, `machine_busy_seconds`), what a phase
  used (`CpuUsage`, of one process or several, e.g. a `process_tree`) or a window of a run
  (`CpuSampler`), per thread (`thread_cpu_seconds`), waiting for processes to be idle (`wait_idle`).
- `bench.support.timing`: seconds per call of a function, interleaved trials of several cases.
- `bench.support.cleanup`: removing what a run created (`Cleanup`, `cleaned_up`, `delete_topics`,
  `unlink_keys`).
- `bench.support.deploy`: service checks, isolated settings, a whole deployment (`deployed`), its
  routing (`route`: a golden and shadow experiments).
- `bench.support.report`: progress lines (`say`), machine and code facts, JSON in bench/results/.
- `bench.support.served_model`: what a peer server (bench/peers/) is given instead of the rig's
  enrichment: a registered model's file (`model_file`) and its transformed input rows (`feature_rows`).

Importing it: every benchmark script starts, before its other imports, with

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench.support` as a script too

so that `import bench.support` works both when the script runs as `.venv/bin/python bench/bench_x.py`
(Python then puts bench/, not the repository root, on `sys.path`) and as `python -m bench.bench_x` from
the repository root. Nothing else in bench/ relies on the folder a script is started from.
`bench/naive_agent.py`, a Faust app that bench_pipeline.py starts as a process, needs none of it.
"""
