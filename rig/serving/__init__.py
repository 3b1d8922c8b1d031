"""Scoring a micro-batch: dispatch to golden and experiments, the model backbone, the cache in front of
it, prediction records, and the warmers that make a model ready before routing switches to it."""
