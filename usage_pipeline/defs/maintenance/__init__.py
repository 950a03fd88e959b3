"""Lake definitions: the lake_files asset (DuckLake upkeep), its lake_health check, job and schedule."""
