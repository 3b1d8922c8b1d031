"""Prediction rig: framework-free core (no Kafka, no Faust imports at module level)."""

__version__ = "0.1.0"
