"""The model factory: per-ISBN training, quality gates, and the ZenML pipeline around them."""
