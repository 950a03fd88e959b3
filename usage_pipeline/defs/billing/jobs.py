"""The period-close job: catalog, metering and billing assets of one close date (a daily partition), then
the late_usage check."""

from __future__ import annotations

import dagster as dg

from usage_pipeline.defs.billing.checks import late_usage
from usage_pipeline.defs.catalog.assets import CATALOG_KEYS
from usage_pipeline.defs.metering.assets import METERING_KEYS

BILLING_KEYS = (dg.AssetKey("invoice_line_items"), dg.AssetKey("pending_invoices"))

# Partitioned by the close partitions (inferred from the metering and billing assets). The unpartitioned
# catalog runs in the same run as the partitioned steps, so a broken catalog stops the
# close before anything is metered. Run one date: `dagster job execute -j period_close --partition D`
# or the CLI's `usage-pipeline close --date D`. late_usage (a check of usage_events, which the close does
# not materialize) runs after the billing step, so a close leaves its fresh evaluation: re-closing the
# date it names turns it green in the same run.
period_close_job = dg.define_asset_job(
    "period_close",
    selection=dg.AssetSelection.assets(*CATALOG_KEYS, *METERING_KEYS, *BILLING_KEYS)
    | dg.AssetSelection.checks(late_usage),
    description="Close a UTC day: meter and rate every period ending on it (re-run = regenerate).",
    # One process for the run: its steps run one after the other anyway (pool "period_close").
    executor_def=dg.in_process_executor,
)
