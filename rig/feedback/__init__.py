"""The feedback loop: outcomes joined to predictions, sequential tests, promotion, the metadata store."""
