"""The catalog: meters, prices and subscriptions from YAML (and CSV / Parquet), and their billing periods."""
