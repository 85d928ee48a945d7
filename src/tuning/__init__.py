"""Tuning: Optuna studies whose trials are ordinary fits (``src.tune`` is the command)."""
