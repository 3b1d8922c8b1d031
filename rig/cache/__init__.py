"""The two-tier prediction cache: an in-process LRU, then Redis; keys by model, transform and features."""
