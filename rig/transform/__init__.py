"""The inference-time transform: its declarative spec, the fitted transform, each model's input columns."""
