"""Features of a request: the Feast store, the online readers, enrichment, serving statistics."""
