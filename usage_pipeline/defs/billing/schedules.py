"""The period-close schedule: day D is closed at D+1 00:00 UTC plus the grace for late files."""

import math
from datetime import UTC, datetime, timedelta

import dagster as dg

from usage_pipeline.defs.billing.jobs import period_close_job
from usage_pipeline.settings import definition_settings

MAX_GRACE = timedelta(hours=24)


def close_cron(grace: timedelta) -> str:
    """The daily cron (UTC) that fires `grace` after midnight, rounded up to the minute."""
    if grace < timedelta(0) or grace >= MAX_GRACE:
        raise ValueError(
            f"USAGE_CLOSE_GRACE must be at least 0 and under 24 hours, got {grace}: the schedule closes "
            "day D once a day, between D+1 00:00 and D+2 00:00 UTC"
        )
    minutes = math.ceil(grace.total_seconds() / 60)
    return f"{minutes % 60} {minutes // 60} * * *"


def closed_day(tick: datetime, grace: timedelta) -> str:
    """The partition a tick closes: the UTC day that ended `grace` (rounded up) before the tick."""
    minutes = math.ceil(grace.total_seconds() / 60)
    return ((tick.astimezone(UTC) - timedelta(minutes=minutes)).date() - timedelta(days=1)).isoformat()


def build_period_close_schedule(grace: timedelta) -> dg.ScheduleDefinition:
    cron = close_cron(grace)

    # RUNNING by default: a billing team expects invoices every day without a toggle to remember, and
    # `usage-pipeline dev` promises schedules on. Closing is idempotent, so an extra tick is harmless.
    @dg.schedule(
        name="period_close_schedule",
        cron_schedule=cron,
        job=period_close_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Closes day D at D+1 00:00 UTC + {grace} (USAGE_CLOSE_GRACE): cron '{cron}' UTC.",
    )
    def period_close_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        tick = context.scheduled_execution_time or datetime.now(UTC)
        day = closed_day(tick, grace)
        return dg.RunRequest(run_key=f"period_close:{day}", partition_key=day, tags={"close_date": day})

    return period_close_schedule


@dg.definitions
def period_close_schedules() -> dg.Definitions:
    """The schedule's cron follows USAGE_CLOSE_GRACE, so it is built with the settings being loaded."""
    return dg.Definitions(schedules=[build_period_close_schedule(definition_settings().close_grace)])
