"""Peers: other serving systems run beside the rig on the same model and requests (`bench_pipeline`).

Each peer runs in a virtual environment of its own (`bench/peers/<peer>/setup` makes it), so its
dependencies never meet the project's; its driver here runs in the project's environment.
"""
