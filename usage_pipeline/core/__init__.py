"""Plain, typed computation of the pipeline: never imports Dagster (a test enforces it)."""
