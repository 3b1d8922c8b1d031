"""Stored models: the registry (UBJ + SHA-256), training on Feast data, batch prediction, quality metrics."""
