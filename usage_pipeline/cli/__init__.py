"""`usage-pipeline`: the command line (click), over the same Dagster instance and definitions as the UI."""

from usage_pipeline.cli.main import main

__all__ = ["main"]
