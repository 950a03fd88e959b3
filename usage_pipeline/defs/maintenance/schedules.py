"""The weekly lake-maintenance schedule, off until the lake's owners turn it on."""

import dagster as dg

from usage_pipeline.defs.maintenance import jobs

# STOPPED by default, unlike the period close: maintenance deletes files and snapshots for good (time
# travel before the retention is gone), so the team that owns the lake turns it on once it has chosen
# USAGE_LAKE_RETENTION; until then nothing is ever deleted behind its back. Sunday 03:00 UTC is after the
# daily close (01:00 UTC by default); the pass holds the lake's writer turn step by step, so ingest runs
# on this machine wait for each step rather than fail.
lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_schedule",
    job=jobs.lake_maintenance_job,  # the module, not the name: dg would load the job twice
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Weekly lake upkeep, Sunday 03:00 UTC. Off by default: it rewrites and deletes files and expires "
        "snapshots older than USAGE_LAKE_RETENTION, so the team that owns the lake turns it on once it "
        "has chosen that retention (default P400D, a year of invoices with room to audit)."
    ),
)
