"""Dagster definitions only: thin wrappers over usage_pipeline.core, found by dg.load_from_defs_folder."""
