"""Billing core: money rounding, billing periods and the pricing models (no Dagster, no DuckDB)."""
