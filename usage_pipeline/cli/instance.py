"""The Dagster instance the CLI uses: $DAGSTER_HOME, or .dagster_home under the working folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
from filelock import FileLock

DEFAULT_HOME = ".dagster_home"

# Used when the working folder has no dagster.yaml (the CLI run outside a checkout).
FALLBACK_INSTANCE_YAML = """\
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
nux:
  enabled: false
"""


def ensure_dagster_home() -> Path:
    """Make sure DAGSTER_HOME exists and holds the project's instance config (pool limit 1 for period_close).

    When DAGSTER_HOME is unset, runs are kept in ./.dagster_home so that the UI (`usage-pipeline dev`)
    shows what the CLI ran; the project's dagster.yaml is copied there.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    target = home / "dagster.yaml"
    source = Path.cwd() / "dagster.yaml"
    with _home_lock(home):
        if source.exists() and source.resolve() != target.resolve():
            if not target.exists() or target.read_text() != source.read_text():
                shutil.copyfile(source, target)
        elif not target.exists():
            target.write_text(FALLBACK_INSTANCE_YAML)
    return home


def _home_lock(home: Path) -> FileLock:
    """Commands started at once on a new DAGSTER_HOME take turns setting it up."""
    return FileLock(str(home / ".instance.lock"), timeout=120)


def get_instance() -> dg.DagsterInstance:
    home = ensure_dagster_home()
    # Two commands started at once on a new DAGSTER_HOME would both create the instance's SQLite tables
    # ("table runs already exists"): the first to get the lock creates them, the other then opens them.
    with _home_lock(home):
        return dg.DagsterInstance.get()
