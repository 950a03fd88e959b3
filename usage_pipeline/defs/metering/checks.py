"""The metering check: the data issues a close date's metering found (WARN), with counts and samples."""

from datetime import date

import dagster as dg
import duckdb as duckdb_module

from usage_pipeline.core.metering import sql
from usage_pipeline.core.text import plural
from usage_pipeline.defs.metadata import table_entries

SAMPLES_PER_CODE = 5


def usage_exceptions_result(conn: duckdb_module.DuckDBPyConnection, close_date: date) -> dg.AssetCheckResult:
    """WARN when the close date's metering found data issues: counts per code and samples of each."""
    counts = conn.execute(sql.STORED_EXCEPTION_COUNTS, {"close_date": close_date}).fetchall()
    samples = conn.execute(
        sql.STORED_EXCEPTION_SAMPLES, {"close_date": close_date, "per_code": SAMPLES_PER_CODE}
    ).fetchall()
    total = sum(n for _, n in counts)
    metadata: dict[str, dg.RawMetadataValue] = {
        "exceptions": total,
        **{f"code:{code}": n for code, n in counts},
        **table_entries("counts", counts, ["code", "events"]),
        **table_entries(
            "samples",
            samples,
            ["code", "event_id", "subscription", "customer", "meter", "file", "row", "detail"],
        ),
    }
    return dg.AssetCheckResult(
        check_name="usage_exceptions_found",
        asset_key="usage_exceptions",
        passed=total == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=None
        if total == 0
        else f"{plural(total, 'event')} could not be (fully) metered; see samples",
    )
