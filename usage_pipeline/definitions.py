"""The code location: every definition under usage_pipeline/defs (dg's defs folder) plus the resources,
built from one Settings object."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from usage_pipeline.defs.resources import build_resources
from usage_pipeline.settings import Settings, building_definitions_with, load_settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    """The definitions for `settings` (the environment's by default): tests and the CLI pass their own."""
    settings = settings or load_settings()
    with building_definitions_with(settings):
        found = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(found, dg.Definitions(resources=build_resources(settings)))


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
