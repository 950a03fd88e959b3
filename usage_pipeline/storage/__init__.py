"""DuckDB storage: schema, connections and the SQL each stage runs."""
