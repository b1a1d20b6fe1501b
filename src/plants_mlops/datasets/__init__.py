"""Custom Kedro datasets of the project (one module per stage)."""
