"""A snapshot of the asset graph (keys, deps, checks, partitions, groups, jobs, sensors, schedules): a change
to it fails here until asset_graph.json is updated with it, so that it is a reviewed change.

Update after a deliberate change: `USAGE_UPDATE_SNAPSHOT=1 make test` (then review the diff of the file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from usage_pipeline.definitions import build_definitions
from usage_pipeline.settings import load_settings

SNAPSHOT = Path(__file__).with_name("asset_graph.json")


def _partitions(definition: dg.PartitionsDefinition | None) -> str | None:
    if definition is None:
        return None
    if isinstance(definition, dg.TimeWindowPartitionsDefinition):
        return f"{definition.cron_schedule} from {definition.start:%Y-%m-%d} ({definition.timezone})"
    return type(definition).__name__


def graph_of(defs: dg.Definitions) -> dict[str, object]:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "checks": sorted(check.name for check in node.check_keys),
            "kinds": sorted(node.kinds),
        }
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")),
        "sensors": sorted(sensor.name for sensor in defs.sensors or []),
        "schedules": {s.name: s.cron_schedule for s in defs.schedules or []},  # type: ignore[union-attr]
    }


def test_the_asset_graph_is_the_reviewed_one() -> None:
    current = graph_of(build_definitions(load_settings({})))
    text = json.dumps(current, indent=2, sort_keys=True) + "\n"
    if os.environ.get("USAGE_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(text)
    assert SNAPSHOT.exists(), f"no snapshot yet: run with USAGE_UPDATE_SNAPSHOT=1 to write {SNAPSHOT}"
    assert json.loads(SNAPSHOT.read_text()) == current, (
        "the asset graph changed; if that is intended, run with USAGE_UPDATE_SNAPSHOT=1 and review the diff"
    )
