"""`python -m usage_pipeline.cli`."""

from usage_pipeline.cli.main import main

main()
