"""Ingest: S3 file versions -> validated, deduplicated rows, with the ledger deciding what is done."""
