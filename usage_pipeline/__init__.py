"""usage_pipeline: S3 usage files -> DuckDB events -> metered, priced pending invoices (Dagster)."""

__version__ = "0.1.0"
