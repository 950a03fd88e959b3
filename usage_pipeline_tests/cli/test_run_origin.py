"""Runs started by the CLI carry the code location's origin, so the UI finds them where it finds its own:
under the job's Runs tab and on the Overview timeline. The UI side is the real one: the workspace is loaded
from workspace.yaml (a code server, as `usage-pipeline dev` starts it) and asked the UI's own GraphQL
queries."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from usage_pipeline.cli.close import CLOSE_JOB_NAME, run_close
from usage_pipeline.cli.generate import generate_usage_frame, serialize
from usage_pipeline.cli.ingest import run_ingest
from usage_pipeline.cli.launch import LOCATION_NAME
from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.ingest.assets import INGEST_JOB_NAME
from usage_pipeline.defs.ingest.sensors import RUN_KEY_TAG
from usage_pipeline.defs.resources import HOST_TAG, PID_TAG
from usage_pipeline.settings import Settings
from usage_pipeline_tests.conftest import put

pytestmark = pytest.mark.slow

WORKSPACE = Path(__file__).parents[2] / "workspace.yaml"

# The UI's queries, cut to the fields asserted on: js_modules/dagster-ui/packages/ui-core/src/
# pipelines/PipelineRunsRoot.tsx (a job's Runs tab) and runs/useRunsForTimeline.tsx (Overview timeline).
WORKSPACE_QUERY = """
query FutureTicksQuery {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError {
          ... on RepositoryLocation { name repositories { name pipelines { name isJob } } }
        }
      }
    }
  }
}
"""
JOB_RUNS_TAB_QUERY = """
query PipelineRunsRootQuery($limit: Int, $cursor: String, $filter: RunsFilter!) {
  pipelineRunsOrError(limit: $limit, cursor: $cursor, filter: $filter) {
    __typename
    ... on Runs { results { id pipelineName } }
  }
}
"""
TIMELINE_QUERY = """
query CompletedRunTimelineQuery($completedFilter: RunsFilter!, $limit: Int!, $cursor: String) {
  completed: runsOrError(filter: $completedFilter, limit: $limit, cursor: $cursor) {
    __typename
    ... on Runs {
      results { id pipelineName startTime repositoryOrigin { repositoryName repositoryLocationName } }
    }
  }
}
"""
DONE_STATUSES = ["SUCCESS", "FAILURE", "CANCELED"]  # doneStatuses in runs/RunStatuses.tsx


@pytest.fixture
def ui(instance: dg.DagsterInstance) -> Iterator[WorkspaceRequestContext]:
    """What the webserver serves: the workspace of workspace.yaml over this instance."""
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as process:
        yield process.create_request_context()


def _query(ui: WorkspaceRequestContext, query: str, variables: dict[str, object] | None = None) -> dict:
    result = execute_dagster_graphql(ui, query, variables)
    assert not result.errors, result.errors
    return result.data


def _repo_address(ui: WorkspaceRequestContext, job_name: str) -> tuple[str, str]:
    """(repository, location) of the job as the UI's workspace lists it: its repoAddress."""
    entries = _query(ui, WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
    found = [
        (repo["name"], entry["locationOrLoadError"]["name"])
        for entry in entries
        for repo in entry["locationOrLoadError"]["repositories"]
        if any(p["name"] == job_name and p["isJob"] for p in repo["pipelines"])
    ]
    assert len(found) == 1, entries
    return found[0]


def _runs_tab(ui: WorkspaceRequestContext, job_name: str) -> set[str]:
    """The run ids a job's Runs tab lists: filtered by job name and the repository label tag."""
    repository, location = _repo_address(ui, job_name)
    runs_filter = {
        "pipelineName": job_name,
        "tags": [{"key": REPOSITORY_LABEL_TAG, "value": f"{repository}@{location}"}],  # repoAddressAsTag
    }
    data = _query(ui, JOB_RUNS_TAB_QUERY, {"filter": runs_filter, "limit": 25})["pipelineRunsOrError"]
    assert data["__typename"] == "Runs", data
    return {run["id"] for run in data["results"]}


def _upload(s3, bucket: str) -> None:
    frame = generate_usage_frame(
        layout="stripe", rows=50, arrival=datetime.now(UTC), seed=7, key_hint="origin"
    )
    put(s3, bucket, "incoming/origin.csv", serialize(frame, "stripe", "csv"))


def test_cli_runs_are_found_by_the_ui(
    settings: Settings, s3, bucket: str, instance: dg.DagsterInstance, ui: WorkspaceRequestContext
) -> None:
    _upload(s3, bucket)
    started = time.time()
    defs = build_definitions(settings)

    ingested = run_ingest(instance, defs, settings)
    today = datetime.now(UTC).date()
    closed = run_close(instance, defs, today)

    assert ingested.run_ids and not ingested.failed_runs
    assert closed.success
    # For contrast, a run made the way the CLI used to (no origin): the UI does not list it.
    orphan = instance.create_run_for_job(defs.resolve_job_def(CLOSE_JOB_NAME), run_config={})

    location = ui.get_code_location(LOCATION_NAME)
    (repository,) = location.get_repositories().values()
    launched = {closed.run_id: CLOSE_JOB_NAME, **dict.fromkeys(ingested.run_ids, INGEST_JOB_NAME)}
    for run_id, job_name in launched.items():
        run = instance.get_run_by_id(run_id)
        assert run is not None
        # Exactly the origins the UI's launch mutation records (launchPipelineExecution uses these two).
        remote_job = repository.get_full_job(job_name)
        assert run.remote_job_origin == remote_job.get_remote_origin()
        assert run.job_code_origin == remote_job.get_python_origin()
        assert run.remote_job_origin.location_name == LOCATION_NAME
        assert run.tags["dagster/code_location"] == LOCATION_NAME
        # Still the CLI's own run: created by this process, which executed it.
        assert run.tags[HOST_TAG] == socket.gethostname()
        assert run.tags[PID_TAG] == str(os.getpid())
        assert run.tags["usage_pipeline/launched_by"] == "cli"
        assert run.status == dg.DagsterRunStatus.SUCCESS
    assert closed.dagster_run.tags["dagster/partition"] == today.isoformat()
    for run_id in ingested.run_ids:
        assert instance.get_run_by_id(run_id).tags[RUN_KEY_TAG]

    # The job's Runs tab.
    close_tab = _runs_tab(ui, CLOSE_JOB_NAME)
    assert closed.run_id in close_tab
    assert orphan.run_id not in close_tab
    assert set(ingested.run_ids) <= _runs_tab(ui, INGEST_JOB_NAME)

    # The Overview timeline: finished runs updated in the window, drawn on their job's row only when they
    # have a repository origin, keyed by (job, repository, location).
    timeline_filter = {
        "statuses": DONE_STATUSES,
        "updatedAfter": started - 1,
        "updatedBefore": time.time() + 1,
    }
    data = _query(ui, TIMELINE_QUERY, {"completedFilter": timeline_filter, "limit": 500})["completed"]
    assert data["__typename"] == "Runs", data
    rows = {
        run["id"]: (
            run["pipelineName"],
            run["repositoryOrigin"]["repositoryName"],
            run["repositoryOrigin"]["repositoryLocationName"],
        )
        for run in data["results"]
        if run["repositoryOrigin"] and run["startTime"] is not None
    }
    for run_id, job_name in launched.items():
        assert rows[run_id] == (job_name, *_repo_address(ui, job_name))
