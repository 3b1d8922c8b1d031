"""`python -m streams`: the same as `rig-worker`."""

from streams.worker import main

main()
