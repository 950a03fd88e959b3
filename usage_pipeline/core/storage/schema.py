"""DDL of every lake table and view the pipeline writes (SPEC section 5): the analyst's interface."""

from __future__ import annotations

import re
from datetime import date
from typing import NamedTuple

import duckdb

# Money and quantities are exact decimals. Amounts are rounded to the currency's minor unit (at most 4
# decimals in ISO 4217); unit prices and quantities keep up to 12 decimals (SPEC 6).
QUANTITY = "DECIMAL(38, 12)"
AMOUNT = "DECIMAL(38, 4)"

TABLES: dict[str, str] = {
    # --- ingest -------------------------------------------------------------------------------
    "ingested_files": """
        CREATE TABLE IF NOT EXISTS ingested_files (
            file_key       VARCHAR NOT NULL,
            etag           VARCHAR NOT NULL,
            size_bytes     BIGINT NOT NULL,
            layout         VARCHAR,              -- 'stripe' | 'chargebee' | NULL when not recognised
            format         VARCHAR,              -- 'csv' | 'json' | 'jsonl' (+ '.gz')
            status         VARCHAR NOT NULL,     -- succeeded | succeeded_with_errors | failed | skipped_empty
            failed_reason  VARCHAR,              -- e.g. unsupported_file, missing_column:timestamp
            failed_detail  VARCHAR,              -- the human-readable message behind failed_reason
            rows_total     BIGINT NOT NULL,
            rows_accepted  BIGINT NOT NULL,
            rows_duplicate BIGINT NOT NULL,
            rows_rejected  BIGINT NOT NULL,
            arrived_at     TIMESTAMP NOT NULL,   -- the file version's S3 LastModified (UTC)
            ingested_at    TIMESTAMP NOT NULL,
            run_id         VARCHAR
        )""",
    # A file version that was attempted but has no ledger row yet: its attempts and last error (SPEC 2).
    # The ingest transaction that writes the version's ledger row deletes its row here.
    "file_attempts": """
        CREATE TABLE IF NOT EXISTS file_attempts (
            file_key         VARCHAR NOT NULL,
            etag             VARCHAR NOT NULL,
            size_bytes       BIGINT NOT NULL,
            arrived_at       TIMESTAMP NOT NULL,
            attempts         BIGINT NOT NULL,     -- ingest runs that took the version up
            first_attempt_at TIMESTAMP NOT NULL,
            last_attempt_at  TIMESTAMP NOT NULL,
            last_run_id      VARCHAR,
            last_error       VARCHAR              -- NULL: the last attempt ended without saying why (killed?)
        )""",
    # An operator's word that a file version will not be fixed (`usage-pipeline files --ack`): the state
    # checks stop counting that version. A newer version of the key is judged afresh.
    "file_acknowledgements": """
        CREATE TABLE IF NOT EXISTS file_acknowledgements (
            file_key        VARCHAR NOT NULL,
            etag            VARCHAR NOT NULL,    -- the acknowledged version; one row per version
            acknowledged_by VARCHAR NOT NULL,    -- the operator's OS user
            acknowledged_at TIMESTAMP NOT NULL,  -- UTC
            reason          VARCHAR NOT NULL     -- why the file will not be fixed
        )""",
    "usage_events": """
        CREATE TABLE IF NOT EXISTS usage_events (
            event_id        VARCHAR NOT NULL,    -- Stripe identifier (or derived), Chargebee deduplication_id
            layout          VARCHAR NOT NULL,
            event_name      VARCHAR,             -- Stripe layout only
            customer_id     VARCHAR,             -- Stripe layout only
            subscription_id VARCHAR,             -- Chargebee layout only
            ts              TIMESTAMP NOT NULL,  -- event time, UTC, millisecond precision
            properties      JSON NOT NULL,
            source_file     VARCHAR NOT NULL,
            source_etag     VARCHAR NOT NULL,
            source_row      BIGINT NOT NULL,     -- 1-based data row (CSV line after the header, JSON record)
            ingested_at     TIMESTAMP NOT NULL
        )""",
    "rejected_events": """
        CREATE TABLE IF NOT EXISTS rejected_events (
            source_file   VARCHAR NOT NULL,
            source_etag   VARCHAR NOT NULL,
            source_row    BIGINT NOT NULL,
            error_code    VARCHAR NOT NULL,
            error_message VARCHAR NOT NULL,
            raw_record    VARCHAR,
            ingested_at   TIMESTAMP NOT NULL
        )""",
    # --- catalog (published by the catalog assets) ---------------------------------------------
    "meters": """
        CREATE TABLE IF NOT EXISTS meters (
            meter_id       VARCHAR NOT NULL,
            event_name     VARCHAR,
            filters        JSON,
            aggregation    VARCHAR NOT NULL,
            value_property VARCHAR NOT NULL
        )""",
    "prices": f"""
        CREATE TABLE IF NOT EXISTS prices (
            price_id       VARCHAR NOT NULL,
            meter_id       VARCHAR,
            currency       VARCHAR NOT NULL,
            pricing_model  VARCHAR NOT NULL,
            amount         {QUANTITY},
            unit_amount    {QUANTITY},
            package_size   {QUANTITY},
            package_amount {QUANTITY},
            tiers          JSON
        )""",
    "subscriptions": """
        CREATE TABLE IF NOT EXISTS subscriptions (
            subscription_id     VARCHAR NOT NULL,
            customer_id         VARCHAR NOT NULL,
            currency            VARCHAR NOT NULL,
            started_at          TIMESTAMP NOT NULL,
            cancelled_at        TIMESTAMP,
            billing_period_unit VARCHAR NOT NULL,
            billing_period      INTEGER NOT NULL,
            billing_anchor      TIMESTAMP NOT NULL
        )""",
    "subscription_prices": """
        CREATE TABLE IF NOT EXISTS subscription_prices (
            subscription_id VARCHAR NOT NULL,
            price_id        VARCHAR NOT NULL
        )""",
    # --- metering (written by the daily period-close partition) ---------------------------------
    "closed_periods": """
        CREATE TABLE IF NOT EXISTS closed_periods (
            close_date      DATE NOT NULL,       -- the partition: the UTC day period_end falls on
            subscription_id VARCHAR NOT NULL,
            customer_id     VARCHAR NOT NULL,
            period_start    TIMESTAMP NOT NULL,
            period_end      TIMESTAMP NOT NULL,
            closed_at       TIMESTAMP NOT NULL,
            run_id          VARCHAR
        )""",
    "meter_usage": f"""
        CREATE TABLE IF NOT EXISTS meter_usage (
            close_date      DATE NOT NULL,
            subscription_id VARCHAR NOT NULL,
            meter_id        VARCHAR NOT NULL,
            period_start    TIMESTAMP NOT NULL,
            period_end      TIMESTAMP NOT NULL,
            quantity        {QUANTITY} NOT NULL,
            event_count     BIGINT NOT NULL,
            closed_at       TIMESTAMP NOT NULL
        )""",
    "metered_events": """
        CREATE TABLE IF NOT EXISTS metered_events (
            close_date      DATE NOT NULL,
            subscription_id VARCHAR NOT NULL,
            meter_id        VARCHAR NOT NULL,
            period_end      TIMESTAMP NOT NULL,
            source_file     VARCHAR NOT NULL,
            source_etag     VARCHAR NOT NULL,
            source_row      BIGINT NOT NULL
        )""",
    "usage_exceptions": """
        CREATE TABLE IF NOT EXISTS usage_exceptions (
            close_date      DATE NOT NULL,
            code            VARCHAR NOT NULL,    -- customer_not_found | subscription_not_found | no_meter |
                                                 -- meter_event_value_not_found | invalid_value
            event_id        VARCHAR,
            subscription_id VARCHAR,
            customer_id     VARCHAR,
            meter_id        VARCHAR,
            source_file     VARCHAR,
            source_etag     VARCHAR,
            source_row      BIGINT,
            detail          VARCHAR NOT NULL
        )""",
    # --- billing --------------------------------------------------------------------------------
    "invoice_line_items": f"""
        CREATE TABLE IF NOT EXISTS invoice_line_items (
            line_item_id    VARCHAR NOT NULL,
            invoice_id      VARCHAR NOT NULL,
            close_date      DATE NOT NULL,
            subscription_id VARCHAR NOT NULL,
            customer_id     VARCHAR NOT NULL,
            price_id        VARCHAR NOT NULL,
            meter_id        VARCHAR,
            period_start    TIMESTAMP NOT NULL,
            period_end      TIMESTAMP NOT NULL,
            quantity        {QUANTITY} NOT NULL,
            amount          {AMOUNT} NOT NULL,
            currency        VARCHAR NOT NULL,
            pricing_model   VARCHAR NOT NULL,
            tiers           JSON,
            status          VARCHAR NOT NULL,
            closed_at       TIMESTAMP NOT NULL
        )""",
    "pending_invoices": f"""
        CREATE TABLE IF NOT EXISTS pending_invoices (
            invoice_id      VARCHAR NOT NULL,
            close_date      DATE NOT NULL,
            subscription_id VARCHAR NOT NULL,
            customer_id     VARCHAR NOT NULL,
            period_start    TIMESTAMP NOT NULL,
            period_end      TIMESTAMP NOT NULL,
            currency        VARCHAR NOT NULL,
            total           {AMOUNT} NOT NULL,
            line_count      BIGINT NOT NULL,
            status          VARCHAR NOT NULL,
            closed_at       TIMESTAMP NOT NULL
        )""",
    # One row per (re-)close of an invoice: what the close read and what it changed (SPEC 5).
    "invoice_revisions": f"""
        CREATE TABLE IF NOT EXISTS invoice_revisions (
            invoice_id      VARCHAR NOT NULL,
            revision        INTEGER NOT NULL,    -- 1 for the first close, then 2, 3, …
            close_date      DATE NOT NULL,
            subscription_id VARCHAR NOT NULL,
            currency        VARCHAR NOT NULL,
            snapshot_id     BIGINT NOT NULL,     -- the lake snapshot the close read (its inputs); the lines
                                                 -- it wrote are in a later one (see close_id)
            closed_at       TIMESTAMP NOT NULL,
            run_id          VARCHAR,
            close_id        VARCHAR,             -- the commit of this close: lake.snapshots() WHERE
                                                 -- commit_extra_info->>'close_id' = close_id gives the
                                                 -- snapshot holding this revision's lines
            total_before    {AMOUNT},            -- NULL on the first revision
            total_after     {AMOUNT},            -- NULL when the re-close removed the invoice
            lines_added     BIGINT NOT NULL,
            lines_removed   BIGINT NOT NULL,
            lines_changed   BIGINT NOT NULL,
            changes         JSON NOT NULL        -- per line: change (added, removed, changed), line_item_id,
                                                 -- price_id, meter_id, old and new quantity and amount
                                                 -- (decimals as strings)
        )""",
}

VIEWS: dict[str, str] = {
    # Lineage: every event behind a line item, with the S3 file and row it came from.
    "line_item_events": """
        CREATE OR REPLACE VIEW line_item_events AS
        SELECT li.invoice_id, li.line_item_id, li.price_id, li.subscription_id, li.meter_id,
               li.period_start, li.period_end,
               e.event_id, e.ts, e.event_name, e.customer_id, e.properties,
               e.source_file, e.source_etag, e.source_row, e.ingested_at
        FROM invoice_line_items AS li
        JOIN metered_events AS me
          ON me.close_date = li.close_date AND me.subscription_id = li.subscription_id
         AND me.meter_id = li.meter_id AND me.period_end = li.period_end
        JOIN usage_events AS e
          ON e.source_file = me.source_file AND e.source_etag = me.source_etag
         AND e.source_row = me.source_row""",
}


def _existing(conn: duckdb.DuckDBPyConnection) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' "
        "AND database_name = current_database() "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE schema_name = 'main' "
        "AND database_name = current_database()"
    ).fetchall()
    return {row[0] for row in rows}


def missing_schema(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """The tables and views of the schema that the connected database does not have yet."""
    existing = _existing(conn)
    return [name for name in [*TABLES, *VIEWS] if name not in existing]


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every table and view that is missing; existing ones are left as they are (a lake commit
    per statement that changes something, none when nothing is missing)."""
    missing = set(missing_schema(conn))
    for name, ddl in TABLES.items():
        if name in missing:
            conn.execute(ddl)
    for name, ddl in VIEWS.items():
        if name in missing:
            conn.execute(ddl)


class ColumnDef(NamedTuple):
    """One column as the DDL above declares it; the description is its trailing comment."""

    name: str
    type: str
    nullable: bool
    description: str | None


_COLUMN = re.compile(r"(?P<name>\w+)\s+(?P<type>.+?)(?P<not_null>\s+NOT NULL)?")


def table_columns(table: str) -> list[ColumnDef]:
    """The columns of one of TABLES, read from its DDL (one column per line, comments continue on the
    next line), so the UI's column schema never drifts from what the pipeline creates."""
    columns: list[ColumnDef] = []
    for line in TABLES[table].strip().splitlines()[1:]:
        code, _, comment = line.partition("--")
        code, comment = code.strip().rstrip(",").strip(), comment.strip()
        if not code and comment and columns:
            last = columns[-1]
            columns[-1] = last._replace(description=f"{last.description or ''} {comment}".strip())
        elif code and code != ")" and (match := _COLUMN.fullmatch(code)):
            columns.append(
                ColumnDef(match["name"], match["type"], match["not_null"] is None, comment or None)
            )
    return columns


def row_count(conn: duckdb.DuckDBPyConnection, table: str, close_date: date | None = None) -> int:
    """Rows of one of TABLES, or of its close_date partition when one is given."""
    if table not in TABLES:
        raise KeyError(f"not a pipeline table: {table}")
    query = f'SELECT count(*) FROM "{table}"'
    if close_date is None:
        return int(conn.execute(query).fetchall()[0][0])
    return int(conn.execute(query + " WHERE close_date = ?", [close_date]).fetchall()[0][0])
