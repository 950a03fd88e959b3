"""Storage: the DuckDB schema, connections with one transaction helper, and how values are stored."""
