"""Runs the CLI starts: recorded with the code location's origin, as the UI records its runs, and executed
in this process."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import dagster as dg

# Dagster's run-creation and execution internals (1.13): the public `execute_in_process` records no origin,
# and the public launch path (`submit_run`) hands the run to a daemon or code server, not this process.
from dagster._core.code_pointer import CodePointer
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import execute_run
from dagster._core.execution.execute_in_process import merge_run_tags
from dagster._core.origin import JobPythonOrigin
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.workspace.load import location_origin_from_module_name

from usage_pipeline.defs.resources import process_tags

# The code location as workspace.yaml declares it (the webserver's and daemon's view of this code):
# module, location name and working directory. The attribute is the `@dg.definitions` function the code
# server finds in the module. A run recorded with these origins is one the UI lists under the job.
DEFINITIONS_MODULE = "usage_pipeline.definitions"
DEFINITIONS_ATTRIBUTE = "defs"
LOCATION_NAME = "usage_pipeline"
WORKING_DIRECTORY = "."

LAUNCHED_BY_TAG = "usage_pipeline/launched_by"
# The CLI prints its own summary; the full event log still goes to the instance (UI).
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def job_origins(job_name: str) -> tuple[RemoteJobOrigin, JobPythonOrigin]:
    """The origins the UI's launch gives a run of `job_name` (`remote_job.get_remote_origin()` and
    `get_python_origin()` of the location loaded from workspace.yaml)."""
    location = location_origin_from_module_name(
        DEFINITIONS_MODULE, None, WORKING_DIRECTORY, location_name=LOCATION_NAME
    )
    # A Definitions object is always served as the one repository of its location, under this name.
    remote = RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME).get_job_origin(job_name)
    pointer = CodePointer.from_module(DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE, WORKING_DIRECTORY)
    # The code server serves `sys.executable`, Dagster's default entry point and an empty container context.
    python = ReconstructableRepository(
        pointer, executable_path=sys.executable, container_context={}
    ).get_python_origin()
    return remote, python.get_job_origin(job_name)


def launch_in_process(
    instance: dg.DagsterInstance,
    job: dg.JobDefinition,
    *,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, object] | None = None,
    partition_key: str | None = None,
) -> dg.JobExecutionResult:
    """Create a run of `job` (the caller's definitions, resources bound) with the code location's
    origin, then execute it here and now. A failed run is returned, not raised.

    The run carries this process's host and pid from its creation on, so that a later command recognises
    it as dead if this process is killed before or while running it.
    """
    remote_origin, python_origin = job_origins(job.name)
    config = {**(run_config or {}), **QUIET_CONSOLE}
    run = instance.create_run_for_job(
        job,
        run_config=config,
        tags=merge_run_tags(
            job_def=job,
            partition_key=partition_key,
            tags={**(tags or {}), LAUNCHED_BY_TAG: "cli", **process_tags()},
            asset_selection=None,
            instance=instance,
            run_config=config,
        ),
        remote_job_origin=remote_origin,
        job_code_origin=python_origin,
    )
    return execute_run(InMemoryJob(job), run, instance, raise_on_error=False)
