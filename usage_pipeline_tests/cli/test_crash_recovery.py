"""kill -9 at every stage of `ingest` and mid-step in `close`: the next runs lose nothing, double nothing,
and are never blocked by what the dead process held.

The kill is placed by a `sitecustomize` module on the victim's PYTHONPATH (test code, not product code): it
wraps one product function so that the process SIGKILLs itself at that exact point.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.settings import Settings, lake_of
from usage_pipeline_tests.cli.test_cli_processes import assert_each_file_exactly_once, cli_env
from usage_pipeline_tests.conftest import put

pytestmark = pytest.mark.slow

FILES = 4
ROWS = 3_000

# Where the victim dies. Each hook kills on the given call of the wrapped function (1-based).
KILL_HOOKS = {
    # the cursor with its requests is saved, no run exists yet
    "before_run_created": ("usage_pipeline.cli.ingest", "_execute", "before", 1),
    # the run record exists (NOT_STARTED) but never starts
    "run_created_not_started": ("dagster._core.instance.runs.run_domain", "RunDomain.create_run", "after", 1),
    # the second file's GET (the first file is being written meanwhile)
    "during_download": ("usage_pipeline.defs.ingest.assets", "read_version", "before", 2),
    # the four small files share a transaction: their events are inserted, the transaction is open
    "during_write": ("usage_pipeline.core.ingest.store", "_insert_group_events", "after", 1),
    # the process dies while that shared COMMIT is under way
    "during_commit": ("usage_pipeline.core.ingest.store", "transact", "commit", 1),
    # each file alone (as big files are written): the second file's COMMIT is under way
    "during_commit_one_file": ("usage_pipeline.core.ingest.store", "transact", "commit", 2, 1),
    # a close run dies inside its metering transaction, holding the "period_close" pool slot
    "close_mid_step": ("usage_pipeline.core.metering.meter", "write_metering", "after", 1),
    # a close run dies while its billing COMMIT (line items, invoices, revisions) is under way
    "close_during_commit": ("usage_pipeline.core.billing.close", "transact", "commit", 1),
}

SITECUSTOMIZE = """
import importlib, os, signal, threading, time, functools, contextlib

_module, _name, _when, _nth = os.environ["USAGE_TEST_KILL_AT"].split(":")
_nth = int(_nth)
_calls = [0]


def _die():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


def _wrap(original):
    if _when == "commit":  # original is lake.transact(conn, body, ...)
        def wrapped(conn, body, **kwargs):
            def body_then_die():
                result = body()
                _calls[0] += 1
                if _calls[0] == _nth:  # die a moment after COMMIT is sent, wherever it has got to
                    threading.Timer(0.002, _die).start()
                return result
            return original(conn, body_then_die, **kwargs)
        return wrapped

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        _calls[0] += 1
        if _when == "before" and _calls[0] == _nth:
            _die()
        result = original(*args, **kwargs)
        if _when == "after" and _calls[0] == _nth:
            _die()
        return result
    return wrapped


if os.environ.get("USAGE_TEST_GROUP_MAX_ROWS"):  # small files written one by one, as big ones are
    import usage_pipeline.core.ingest.runner as runner
    runner.GROUP_MAX_ROWS = int(os.environ["USAGE_TEST_GROUP_MAX_ROWS"])

module = importlib.import_module(_module)
owner = module
*path, attr = _name.split(".")
for part in path:
    owner = getattr(owner, part)
setattr(owner, attr, _wrap(getattr(owner, attr)))
"""


def upload(s3, bucket: str) -> dict[str, int]:
    arrival = datetime.now(UTC)
    sizes = {}
    for i in range(FILES):
        frame = generate_usage_frame(
            layout="stripe", rows=ROWS, arrival=arrival, seed=i, key_hint=f"kill-{i}", error_rate=0.01
        )
        key = f"incoming/kill-{i}.csv"
        put(s3, bucket, key, serialize(frame, "stripe", "csv"))
        sizes[key] = ROWS
    return sizes


def run_cli(env: dict[str, str], cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "usage_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def victim_env(env: dict[str, str], hooks: Path, stage: str) -> dict[str, str]:
    module, name, when, nth, *group_max_rows = KILL_HOOKS[stage]
    return {
        **env,
        "PYTHONPATH": os.pathsep.join([str(hooks), env.get("PYTHONPATH", "")]),
        "USAGE_TEST_KILL_AT": f"{module}:{name}:{when}:{nth}",
        **({"USAGE_TEST_GROUP_MAX_ROWS": str(group_max_rows[0])} if group_max_rows else {}),
    }


def assert_nothing_left_running(home: Path) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        stuck = instance.get_runs(
            dg.RunsFilter(
                statuses=[
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                    dg.DagsterRunStatus.QUEUED,
                ]
            )
        )
        assert stuck == [], [(r.run_id, r.status) for r in stuck]
        pool = instance.event_log_storage.get_concurrency_info("period_close")
        assert pool.claimed_slots == [], pool.claimed_slots


@pytest.mark.parametrize("stage", list(KILL_HOOKS))
def test_kill_9_at_any_stage_then_rerun_loses_nothing(stage, settings: Settings, s3, bucket, tmp_path):
    sizes = upload(s3, bucket)
    home = tmp_path / "home"
    home.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = {**cli_env(settings, home), "USAGE_RETRY_BACKOFF": "0"}
    today = datetime.now(UTC).date().isoformat()

    if stage.startswith("close_"):
        assert run_cli(env, tmp_path, "ingest").returncode == 0
        victim = run_cli(victim_env(env, hooks, stage), tmp_path, "close", "--date", today)
    else:
        victim = run_cli(victim_env(env, hooks, stage), tmp_path, "ingest")
    assert victim.returncode == -9, f"the victim was not killed at {stage}: {victim.stderr[-2000:]}"

    # The next commands find what the dead one left, finish it, and are not blocked by it.
    rerun = run_cli(env, tmp_path, "ingest")
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert_each_file_exactly_once(settings, sizes)
    closed = run_cli(env, tmp_path, "close", "--date", today, timeout=120)
    assert closed.returncode == 0, closed.stderr[-3000:]
    again = run_cli(env, tmp_path, "ingest")
    assert again.returncode == 0 and "nothing new" in again.stdout, again.stdout + again.stderr[-2000:]
    assert_nothing_left_running(home)
    with read_only(lake_of(settings)) as conn:
        assert conn.execute("SELECT count(*) FROM file_attempts").fetchall()[0][0] == 0
