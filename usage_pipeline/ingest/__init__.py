"""Ingest domain: S3 file versions -> validated, deduplicated rows in DuckDB."""
