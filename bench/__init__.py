"""Benchmarks of the rig (not tests): one script per benchmark, shared helpers in `bench.support`."""
