"""Data, model loading, the training loop and its metrics. Nothing here knows about Optuna."""
