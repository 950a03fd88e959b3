"""The catalog: meters, prices and subscriptions, validated from YAML (and CSV / Parquet)."""
