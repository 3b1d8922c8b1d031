"""The `rig` command line: the operator's side of the library (topics, features, models, routing)."""
