"""Per-ISBN weekly forecasting: models, metrics, tuning, and the serving artifact."""
