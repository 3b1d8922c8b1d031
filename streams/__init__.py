"""Faust wiring of the rig: topics, tables and agents that call into `rig/`."""
