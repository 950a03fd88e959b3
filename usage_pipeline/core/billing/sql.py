"""Named SQL of the billing stage: line items and pending invoices of a close date, and their checks."""

from __future__ import annotations

from usage_pipeline.core.metering.sql import COUNTED
from usage_pipeline.core.storage.lake import LAKE_ALIAS

# The stored closed periods and metered usage of one close date: the input of rating.
CREATE_STORED_PERIODS = """
    CREATE OR REPLACE TEMP TABLE rt_stored_periods AS
    SELECT subscription_id, customer_id, period_start, period_end
    FROM closed_periods WHERE close_date = $close_date
"""
STORED_PERIOD_COUNT = "SELECT count(*) FROM rt_stored_periods"
CREATE_STORED_USAGE = """
    CREATE OR REPLACE TEMP TABLE rt_stored_usage AS
    SELECT subscription_id, meter_id, period_start, period_end, quantity, event_count
    FROM meter_usage WHERE close_date = $close_date
"""

# One candidate line per (period, price of the subscription): a flat fee always (quantity 1), a metered
# price only when its meter counted at least one event in the period (Chargebee rule, SPEC 7).
# `{periods}` / `{usage}` are relation names chosen by the code, never configuration.
CREATE_CANDIDATES = """
    CREATE OR REPLACE TEMP TABLE rt_candidates AS
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end,
           sp.price_id, pr.meter_id, pr.currency, pr.pricing_model,
           CAST(CASE WHEN pr.meter_id IS NULL THEN 1 ELSE u.quantity END AS DECIMAL(38, 12)) AS quantity
    FROM {periods} AS p
    JOIN cat_subscription_prices AS sp ON sp.subscription_id = p.subscription_id
    JOIN cat_prices AS pr ON pr.price_id = sp.price_id
    LEFT JOIN {usage} AS u
      ON u.subscription_id = p.subscription_id AND u.meter_id = pr.meter_id
     AND u.period_end = p.period_end
    WHERE pr.meter_id IS NULL OR u.event_count > 0
"""

# What Python has to price: each distinct (price, quantity) once.
DISTINCT_RATINGS = "SELECT DISTINCT price_id, quantity FROM rt_candidates"

# Deterministic ids: the invoice of a (subscription, period end) keeps its id across re-closes, and so
# does each of its lines (one per price). Documented in the README; tests recompute them with hashlib.
INVOICE_ID = (
    "'inv_' || left(sha256(c.subscription_id || '|' || strftime(c.period_end, '%Y-%m-%dT%H:%M:%S.%fZ')), 20)"
)

# Each invoice id is hashed once (not once per line), then each line id from it.
CREATE_LINES = f"""
    CREATE OR REPLACE TEMP TABLE rt_lines AS
    WITH invoices AS (
        SELECT c.subscription_id, c.period_end, {INVOICE_ID} AS invoice_id
        FROM (SELECT DISTINCT subscription_id, period_end FROM rt_candidates) AS c),
    ided AS (
        SELECT i.invoice_id, c.*, r.amount, r.tiers
        FROM rt_candidates AS c
        JOIN invoices AS i ON i.subscription_id = c.subscription_id AND i.period_end = c.period_end
        JOIN rt_ratings AS r ON r.price_id = c.price_id AND r.quantity = c.quantity)
    SELECT 'li_' || left(sha256(invoice_id || '|' || price_id), 20) AS line_item_id, *
    FROM ided
"""

CREATE_INVOICES = """
    CREATE OR REPLACE TEMP TABLE rt_invoices AS
    SELECT invoice_id, subscription_id, customer_id, period_start, period_end, currency,
           CAST(sum(amount) AS DECIMAL(38, 4)) AS total, count(*) AS line_count
    FROM rt_lines
    GROUP BY invoice_id, subscription_id, customer_id, period_start, period_end, currency
"""

DELETE_CLOSE_DATE = {
    table: f"DELETE FROM {table} WHERE close_date = $close_date"
    for table in ("invoice_line_items", "pending_invoices")
}

INSERT_LINES = """
    INSERT INTO invoice_line_items (line_item_id, invoice_id, close_date, subscription_id, customer_id,
                                    price_id, meter_id, period_start, period_end, quantity, amount,
                                    currency, pricing_model, tiers, status, closed_at)
    SELECT line_item_id, invoice_id, $close_date, subscription_id, customer_id, price_id, meter_id,
           period_start, period_end, quantity, amount, currency, pricing_model, tiers, 'pending', $closed_at
    FROM rt_lines
"""

INSERT_INVOICES = """
    INSERT INTO pending_invoices (invoice_id, close_date, subscription_id, customer_id, period_start,
                                  period_end, currency, total, line_count, status, closed_at)
    SELECT invoice_id, $close_date, subscription_id, customer_id, period_start, period_end, currency,
           total, line_count, 'pending', $closed_at
    FROM rt_invoices
"""

WORKSPACE_INVOICE_COUNT = "SELECT count(*), sum(line_count) FROM rt_invoices"

TOTALS_BY_CURRENCY = """
    SELECT currency, CAST(sum(total) AS DECIMAL(38, 4)) AS total, count(*) AS invoices,
           CAST(sum(line_count) AS BIGINT) AS lines
    FROM rt_invoices GROUP BY currency ORDER BY currency
"""

# --- invoice revisions (SPEC 5): what a (re-)close changes, per invoice -------------------------------


def _decimal_text(column: str, scale: int) -> str:
    """A decimal column (DECIMAL(38, `scale`)) as exact JSON text, never a float: "300", "100.5" (both
    column types have a scale, so the text holds a point and trimming zeros stops there).

    DuckDB 1.5.5 prints a HUGEINT-backed decimal about 20 times slower than a BIGINT-backed one, so a
    value that fits DECIMAL(18, `scale`) (the same scale: the same digits) is printed from there, the
    others (and NULL) as they are: coalesce prints a row with the second form only when the first gave
    NULL."""
    narrow = f"CAST(TRY_CAST({column} AS DECIMAL(18, {scale})) AS VARCHAR)"
    return f"rtrim(rtrim(coalesce({narrow}, CAST({column} AS VARCHAR)), '0'), '.')"


# The lines of the close date that rt_lines adds, removes or changes (quantity or amount; a line's id is
# its invoice and price, so the price never changes under one id). Run before the old lines are deleted.
CREATE_LINE_CHANGES = """
    CREATE OR REPLACE TEMP TABLE rv_line_changes AS
    WITH stored AS (
        SELECT line_item_id, invoice_id, price_id, meter_id, quantity, amount
        FROM invoice_line_items WHERE close_date = $close_date)
    SELECT coalesce(n.invoice_id, o.invoice_id) AS invoice_id,
           coalesce(n.line_item_id, o.line_item_id) AS line_item_id,
           CASE WHEN o.line_item_id IS NULL THEN 'added'
                WHEN n.line_item_id IS NULL THEN 'removed'
                ELSE 'changed' END AS change,
           coalesce(n.price_id, o.price_id) AS price_id, coalesce(n.meter_id, o.meter_id) AS meter_id,
           o.quantity AS old_quantity, n.quantity AS new_quantity,
           o.amount AS old_amount, n.amount AS new_amount
    FROM stored AS o
    FULL JOIN rt_lines AS n ON n.line_item_id = o.line_item_id
    WHERE o.line_item_id IS NULL OR n.line_item_id IS NULL OR o.quantity <> n.quantity OR o.amount <> n.amount
"""

# One revision per invoice with at least one changed line (a new invoice: every line added), numbered
# after the invoice's last revision; an invoice id belongs to one close date (its period end's day).
# The changes are listed by price_id: sorted as (price_id, change) pairs (a price has one line per
# invoice), which DuckDB 1.5.5 does much faster than an aggregate's ORDER BY over 100k groups.
CREATE_REVISIONS = f"""
    CREATE OR REPLACE TEMP TABLE rv_revisions AS
    WITH changed AS (
        SELECT invoice_id,
               count(*) FILTER (WHERE change = 'added') AS lines_added,
               count(*) FILTER (WHERE change = 'removed') AS lines_removed,
               count(*) FILTER (WHERE change = 'changed') AS lines_changed,
               CAST(to_json(list_transform(list_sort(list({{'price_id': price_id, 'change': json_object(
                   'change', change, 'line_item_id', line_item_id, 'price_id', price_id, 'meter_id', meter_id,
                   'old_quantity', {_decimal_text("old_quantity", 12)},
                   'new_quantity', {_decimal_text("new_quantity", 12)},
                   'old_amount', {_decimal_text("old_amount", 4)},
                   'new_amount', {_decimal_text("new_amount", 4)})}})),
                   lambda c: c.change)) AS JSON) AS changes
        FROM rv_line_changes GROUP BY invoice_id),
    stored AS (
        SELECT invoice_id, subscription_id, currency, total
        FROM pending_invoices WHERE close_date = $close_date),
    revised AS (
        SELECT invoice_id, max(revision) AS revision
        FROM invoice_revisions WHERE close_date = $close_date GROUP BY invoice_id)
    SELECT c.invoice_id, CAST(coalesce(r.revision, 0) + 1 AS INTEGER) AS revision,
           coalesce(n.subscription_id, o.subscription_id) AS subscription_id,
           coalesce(n.currency, o.currency) AS currency,
           o.total AS total_before, n.total AS total_after,
           c.lines_added, c.lines_removed, c.lines_changed, c.changes
    FROM changed AS c
    LEFT JOIN rt_invoices AS n ON n.invoice_id = c.invoice_id
    LEFT JOIN stored AS o ON o.invoice_id = c.invoice_id
    LEFT JOIN revised AS r ON r.invoice_id = c.invoice_id
"""

REVISION_COLUMNS = (
    "invoice_id, revision, close_date, subscription_id, currency, snapshot_id, closed_at, run_id, close_id, "
    "total_before, total_after, lines_added, lines_removed, lines_changed, changes"
)

INSERT_REVISIONS = f"""
    INSERT INTO invoice_revisions ({REVISION_COLUMNS})
    SELECT invoice_id, revision, $close_date, subscription_id, currency, $snapshot_id, $closed_at, $run_id,
           $close_id, total_before, total_after, lines_added, lines_removed, lines_changed, changes
    FROM rv_revisions
"""

REVISION_COUNTS = """
    SELECT count(*), coalesce(sum(lines_added), 0), coalesce(sum(lines_removed), 0),
           coalesce(sum(lines_changed), 0)
    FROM rv_revisions
"""

# What a revision says, as revisions.py reads it: from the workspace (a dry run) or the stored table.
_REVISION_FIELDS = (
    "invoice_id, revision, subscription_id, currency, total_before, total_after, "
    "lines_added, lines_removed, lines_changed, changes"
)
WORKSPACE_REVISIONS = f"SELECT {_REVISION_FIELDS} FROM rv_revisions ORDER BY subscription_id, invoice_id"
STORED_REVISIONS = f"""
    SELECT {_REVISION_FIELDS} FROM invoice_revisions
    WHERE invoice_id = $invoice_id ORDER BY revision
"""

# DuckLake commit metadata of a close, in the close's transaction: lake.snapshots() shows it.
SET_COMMIT_MESSAGE = (
    f"CALL {LAKE_ALIAS}.set_commit_message('usage_pipeline', $message, extra_info => $extra_info)"
)

# The snapshot a revision's close committed: its data holds the lines that revision describes.
REVISION_LINES_SNAPSHOT = f"""
    SELECT s.snapshot_id
    FROM invoice_revisions AS r
    JOIN {LAKE_ALIAS}.snapshots() AS s
      ON CASE WHEN json_valid(s.commit_extra_info) THEN s.commit_extra_info ->> 'close_id' END = r.close_id
    WHERE r.invoice_id = $invoice_id AND r.revision = $revision
"""

DROP_WORKSPACE = [
    f"DROP TABLE IF EXISTS {t}"
    for t in (
        "rt_stored_periods",
        "rt_stored_usage",
        "rt_candidates",
        "rt_lines",
        "rt_invoices",
        "rv_line_changes",
        "rv_revisions",
    )
]

# --- checks on a stored close date ------------------------------------------------------------------

# Invoices whose total or line count disagrees with their stored lines (or that have no line at all).
INVOICE_TOTAL_MISMATCHES = """
    SELECT i.invoice_id, i.subscription_id, i.currency, i.total, i.line_count,
           coalesce(l.total, 0) AS lines_total, coalesce(l.n, 0) AS lines
    FROM pending_invoices AS i
    LEFT JOIN (SELECT invoice_id, sum(amount) AS total, count(*) AS n FROM invoice_line_items
               WHERE close_date = $close_date GROUP BY invoice_id) AS l ON l.invoice_id = i.invoice_id
    WHERE i.close_date = $close_date
      AND (l.invoice_id IS NULL OR i.total <> l.total OR i.line_count <> l.n)
    ORDER BY i.invoice_id
"""

# Metered lines with no metered event behind them in the lineage table.
LINES_WITHOUT_EVENTS = """
    SELECT li.line_item_id, li.invoice_id, li.subscription_id, li.price_id, li.meter_id, li.period_end
    FROM invoice_line_items AS li
    WHERE li.close_date = $close_date AND li.meter_id IS NOT NULL
      AND NOT EXISTS (
          SELECT 1 FROM metered_events AS me
          WHERE me.close_date = li.close_date AND me.subscription_id = li.subscription_id
            AND me.meter_id = li.meter_id AND me.period_end = li.period_end)
    ORDER BY li.line_item_id
"""

# Usage exceptions of a close date: counts per code, and a few samples of each.

# --- late usage ------------------------------------------------------------------------------

# Close dates that may hold late events: some event in the date's window was ingested after the close.
LATE_CANDIDATE_DATES = """
    WITH closes AS (
        SELECT close_date, min(period_start) AS lo, max(period_end) AS hi, min(closed_at) AS closed_at
        FROM closed_periods GROUP BY close_date)
    SELECT DISTINCT c.close_date
    FROM closes AS c
    JOIN usage_events AS e ON e.ts >= c.lo AND e.ts < c.hi AND e.ingested_at > c.closed_at
    ORDER BY c.close_date
"""

# The date's closed periods that a late event can land in: a late Chargebee event names its subscription, a
# late Stripe event can route to any subscription of its customer. Only these are re-metered and re-rated
# (routing still sees the whole catalog), so a late file costs the check its customers, not the whole date.
LATE_STORED_PERIODS = """
    CREATE OR REPLACE TEMP TABLE late_periods AS
    WITH closed AS (
        SELECT * FROM closed_periods WHERE close_date = $close_date),
    bounds AS (
        SELECT min(period_start) AS lo, max(period_end) AS hi, min(closed_at) AS closed_at FROM closed),
    late_owners AS (
        SELECT DISTINCT e.layout,
               CASE e.layout WHEN 'stripe' THEN e.customer_id ELSE e.subscription_id END AS owner
        FROM usage_events AS e, bounds AS w
        WHERE e.ts >= w.lo AND e.ts < w.hi AND e.ingested_at > w.closed_at)
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end, p.closed_at
    FROM closed AS p
    WHERE p.customer_id IN (SELECT owner FROM late_owners WHERE layout = 'stripe')
       OR p.subscription_id IN (SELECT owner FROM late_owners WHERE layout = 'chargebee')
"""

# Per closed period: the counted events ingested after the period was closed, and the invoice total
# re-rated with them next to the stored one (0 when the close produced no invoice).
LATE_PERIODS = f"""
    WITH late AS (
        SELECT p.subscription_id, p.period_end, count(DISTINCT m.erow) AS late_events
        FROM (SELECT erow, period_no, ingested_at FROM mt_matches WHERE {COUNTED}) AS m
        JOIN mt_periods AS mp ON mp.period_no = m.period_no
        JOIN late_periods AS p ON p.subscription_id = mp.subscription_id AND p.period_end = mp.period_end
        WHERE m.ingested_at > p.closed_at
        GROUP BY ALL)
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end, l.late_events,
           coalesce(r.currency, i.currency) AS currency,
           coalesce(i.total, 0) AS invoiced_total, coalesce(r.total, 0) AS rerated_total
    FROM late AS l
    JOIN late_periods AS p ON p.subscription_id = l.subscription_id AND p.period_end = l.period_end
    LEFT JOIN rt_invoices AS r ON r.subscription_id = l.subscription_id AND r.period_end = l.period_end
    LEFT JOIN pending_invoices AS i
      ON i.close_date = $close_date AND i.subscription_id = l.subscription_id AND i.period_end = l.period_end
    ORDER BY p.subscription_id, p.period_end
"""

# --- what the CLI prints of a close date --------------------------------------------------------------

PENDING_INVOICES_OF_DAY = """
    SELECT invoice_id, subscription_id, customer_id, period_start, period_end, currency, total, line_count
    FROM pending_invoices WHERE close_date = $day ORDER BY subscription_id
"""

# The first metered line of a close date, to show its lineage.
FIRST_METERED_LINE = """
    SELECT line_item_id, invoice_id, price_id, quantity FROM invoice_line_items
    WHERE close_date = $day AND meter_id IS NOT NULL ORDER BY invoice_id, price_id LIMIT 1
"""

# The S3 files and rows behind one line item (the line_item_events view).
LINE_ITEM_SOURCES = """
    SELECT source_file, count(*), min(source_row), max(source_row) FROM line_item_events
    WHERE line_item_id = $id GROUP BY ALL ORDER BY 1
"""
