"""The period-close partitions: one per UTC day D, closing every period that ends on D."""

from __future__ import annotations

import dagster as dg

# end_offset=1: today's partition exists, so `usage-pipeline close --date <today>` works; periods that
# end later today are skipped (and reported) until the date is closed again.
close_partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01", end_offset=1)
