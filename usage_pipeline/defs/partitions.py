"""The period-close partitions: one per UTC day D, closing every period that ends on D."""

from __future__ import annotations

from datetime import UTC, date

import dagster as dg

from usage_pipeline.core.catalog.model import CatalogError, load_catalog
from usage_pipeline.settings import Settings

# The first close date when neither USAGE_CLOSE_START nor a loadable catalog with a subscription says.
FALLBACK_CLOSE_START = date(2026, 1, 1)


def close_start(settings: Settings) -> date:
    """The first close date: USAGE_CLOSE_START when set, else the UTC day the catalog's earliest
    subscription starts (no period ends before it), else FALLBACK_CLOSE_START."""
    if settings.close_start is not None:
        return settings.close_start
    try:
        catalog = load_catalog(settings.catalog_path)
    except CatalogError:
        # Definitions must load with a broken catalog: the close run is where its error is shown.
        return FALLBACK_CLOSE_START
    starts = [subscription.started_at for subscription in catalog.subscriptions]
    return min(starts).astimezone(UTC).date() if starts else FALLBACK_CLOSE_START


def close_partitions_for(settings: Settings) -> dg.DailyPartitionsDefinition:
    """The close partitions of `settings`, from `close_start` to today (UTC).

    end_offset=1: today's partition exists, so `usage-pipeline close --date <today>` works; periods that
    end later today are skipped (and reported) until the date is closed again.
    """
    return dg.DailyPartitionsDefinition(start_date=close_start(settings).isoformat(), end_offset=1)
