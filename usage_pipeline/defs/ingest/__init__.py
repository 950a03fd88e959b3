"""Ingest definitions: the ingest multi-asset with its checks, the ingest job and the S3 sensor."""
