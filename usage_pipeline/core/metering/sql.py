"""Named SQL of the metering stage: match stored events to meters, subscriptions and closing periods.

Relations registered before these run (see meter.py):
  cat_subscriptions, cat_subscription_prices, cat_prices   the published catalog tables' rows (Arrow)
  mt_cat_meters       meter_no, meter_id, aggregation, value_path, residual (list of {path, vals} | NULL)
  mt_cat_match_keys   layout, key_path, value, meter_no: a Stripe meter's event_name (key_path ''), the
                      values of the first filter of each filters-only (Chargebee) meter
  mt_cat_layout_keys  layout, key_path: what an event of the layout is looked up by (Stripe: its
                      event_name; Chargebee: each distinct first-filter path, one NULL row when none)
  {periods}          subscription_id, customer_id, period_start, period_end: the periods being closed
Paths are JSON pointers (RFC 6901) into the event's properties. Results land in TEMP tables (mt_*) that
the write statements copy, so that late-usage detection can re-meter without writing anything.
Meters, subscriptions and periods are numbered (meter_no, sub_no, period_no) so that the per-event work
(joins, the mt_matches table, grouping) handles integers; names come back on the small results.
"""

from __future__ import annotations

# The meters by number, kept as a table for the statements that run after the catalog is unregistered.
CREATE_METERS = """
    CREATE OR REPLACE TEMP TABLE mt_meters AS SELECT meter_no, meter_id, aggregation FROM mt_cat_meters
"""

# The (subscription, meter) pairs a subscription's metered prices bill.
CREATE_SUBSCRIPTION_METERS = """
    CREATE OR REPLACE TEMP TABLE mt_sub_meters AS
    WITH subs AS (
        -- Any numbering will do (subscription ids are unique in a catalog): no sort.
        SELECT subscription_id, customer_id, started_at, cancelled_at,
               CAST(row_number() OVER () AS INTEGER) AS sub_no
        FROM cat_subscriptions)
    SELECT DISTINCT s.subscription_id, s.customer_id, pr.meter_id, s.started_at, s.cancelled_at, m.meter_no,
           s.sub_no
    FROM cat_subscription_prices AS sp
    JOIN cat_prices AS pr ON pr.price_id = sp.price_id
    JOIN mt_meters AS m ON m.meter_id = pr.meter_id
    JOIN subs AS s ON s.subscription_id = sp.subscription_id
"""

CREATE_SUBSCRIPTIONS = """
    CREATE OR REPLACE TEMP TABLE mt_subs AS SELECT DISTINCT sub_no, subscription_id FROM mt_sub_meters
"""

# The periods being closed, numbered; sub_no is NULL for a subscription without metered prices.
# `{periods}` is a relation name chosen by the code, never configuration.
CREATE_PERIODS = """
    CREATE OR REPLACE TEMP TABLE mt_periods AS
    SELECT p.subscription_id, p.customer_id, p.period_start, p.period_end,
           CAST(row_number() OVER () AS INTEGER) AS period_no, s.sub_no
    FROM {periods} AS p
    LEFT JOIN mt_subs AS s ON s.subscription_id = p.subscription_id
"""

# Routing: which subscription an event of a meter goes to. A Chargebee event goes to the subscription
# it names while that one is active. A Stripe event goes to one of its customer's subscriptions pricing
# the meter: per (customer, meter) the timeline is cut at every started_at / cancelled_at, and in each
# piece the winner is the active subscription with the earliest started_at, then the smallest id (SPEC 7).
# Each event then joins exactly one piece: "pick one subscription" is decided on the catalog (small),
# never with a group-by over events. Customers with a single candidate skip the cutting.
CREATE_ROUTES = """
    CREATE OR REPLACE TEMP TABLE mt_routes AS
    WITH counted AS (
        SELECT *, count(*) OVER (PARTITION BY customer_id, meter_no) AS holders FROM mt_sub_meters),
    shared AS (
        SELECT * FROM counted WHERE holders > 1),
    bounds AS (
        SELECT customer_id, meter_no, started_at AS b FROM shared
        UNION
        SELECT customer_id, meter_no, cancelled_at FROM shared WHERE cancelled_at IS NOT NULL),
    pieces AS (
        SELECT customer_id, meter_no, b AS valid_from,
               lead(b) OVER (PARTITION BY customer_id, meter_no ORDER BY b) AS valid_to
        FROM bounds),
    winners AS (
        SELECT p.customer_id, p.meter_no, p.valid_from, p.valid_to,
               arg_min(s.sub_no, (s.started_at, s.subscription_id)) AS sub_no
        FROM pieces AS p
        JOIN shared AS s
          ON s.customer_id = p.customer_id AND s.meter_no = p.meter_no
         AND s.started_at <= p.valid_from AND (s.cancelled_at IS NULL OR s.cancelled_at > p.valid_from)
        GROUP BY ALL)
    SELECT 'stripe' AS layout, customer_id AS route_key, meter_no, valid_from, valid_to, sub_no
    FROM winners
    UNION ALL
    SELECT 'stripe', customer_id, meter_no, started_at, cancelled_at, sub_no
    FROM counted WHERE holders = 1
    UNION ALL
    SELECT 'chargebee', subscription_id, meter_no, started_at, cancelled_at, sub_no
    FROM mt_sub_meters
"""

# The files (S3 key and version) of the window's events, numbered: the per-event tables carry the number.
# The columns are dictionary-encoded in storage, so this and the join below cost little.
CREATE_FILES = """
    CREATE OR REPLACE TEMP TABLE mt_files AS
    SELECT source_file, source_etag, CAST(row_number() OVER () AS INTEGER) AS file_no
    FROM (SELECT DISTINCT source_file, source_etag FROM usage_events
          WHERE ts >= $window_start AND ts < $window_end)
"""


def to_quantity(text: str) -> str:
    """SQL for `TRY_CAST(text AS DECIMAL(38, 12))`, the same value for every string, but fast.

    DuckDB 1.5.5 parses a string into a HUGEINT-backed DECIMAL (width > 18) about 100 times slower than
    into a BIGINT-backed one (2-4 us a value: seconds over millions of events). The narrow casts are tried
    first, each only where it gives exactly the wide cast's value: DECIMAL(18, 12) (|x| < 10^6, rounded
    at the same 12th decimal) on text without an exponent (with one, the narrow parse rounds
    differently); then integers up to 18 digits as DECIMAL(18, 0) and up to 12 integer digits with at
    most 6 decimals as DECIMAL(18, 6) (nothing to round); the rest (huge, or not a number) takes the wide
    cast. coalesce evaluates an argument only on the rows still NULL, so each value is parsed once or
    twice. Checked against the wide cast on a million generated strings (signs, spaces, exponents,
    leading zeros, long fractions, out-of-range values, garbage)."""
    return f"""coalesce(
        CASE WHEN NOT contains({text}, 'e') AND NOT contains({text}, 'E')
             THEN TRY_CAST({text} AS DECIMAL(18, 12)) END,
        CASE WHEN regexp_full_match({text}, '[+-]?[0-9]{{1,18}}') THEN TRY_CAST({text} AS DECIMAL(18, 0)) END,
        CASE WHEN regexp_full_match({text}, '[+-]?[0-9]{{0,12}}\\.[0-9]{{0,6}}')
             THEN TRY_CAST({text} AS DECIMAL(18, 6)) END,
        TRY_CAST({text} AS DECIMAL(38, 12)))"""


# Every candidate (event, meter) pair of the window's events, and at least one row per event: meter_no is
# NULL on a row that matched nothing, so `no_meter` needs no anti-join over millions of events. One scan
# and one equi-join for both layouts: Stripe events look meters up by event_name, Chargebee events look
# filters-only meters up by their first filter (once per distinct filter path); the remaining filters are
# checked on the joined pairs. Each match carries the subscription it routes to (sub_no NULL: none) and
# the closing period it falls in (period_no NULL: not in a period being closed). Properties are parsed
# only at the paths a row needs, and the table stays narrow: numbers instead of names and file names, and
# of the event only what usage and lineage read (the few exceptions fetch the rest by rowid: erow).
# Every join is an equi-join (hash join): an open route ends at 'infinity' rather than at NULL, because
# DuckDB 1.5.5 cannot hash-join on `valid_to IS NULL OR ts < valid_to` and falls back to a nested loop
# join (events x routes: minutes at 1M events). No event has an infinite ts (the window bounds it).
CREATE_MATCHES = f"""
    CREATE OR REPLACE TEMP TABLE mt_matches AS
    WITH window_events AS NOT MATERIALIZED (
        SELECT e.rowid AS erow, e.layout, e.event_name, e.ts, e.ingested_at, f.file_no, e.source_row,
               e.properties,
               CASE e.layout WHEN 'stripe' THEN e.customer_id ELSE e.subscription_id END AS route_key
        FROM usage_events AS e
        JOIN mt_files AS f ON f.source_file = e.source_file AND f.source_etag = e.source_etag
        WHERE e.ts >= $window_start AND e.ts < $window_end),
    candidates AS (
        SELECT e.*, k.meter_no, k.aggregation, k.value_path, k.residual
        FROM window_events AS e
        JOIN mt_cat_layout_keys AS ks ON ks.layout = e.layout
        -- The keys with their meter's fields: one lookup per event (and key path), on the catalog's side.
        LEFT JOIN (SELECT k.layout, k.key_path, k.value, m.meter_no, m.aggregation, m.value_path, m.residual
                   FROM mt_cat_match_keys AS k JOIN mt_cat_meters AS m ON m.meter_no = k.meter_no) AS k
          ON k.layout = e.layout AND k.key_path = ks.key_path
         AND k.value = CASE e.layout WHEN 'stripe' THEN e.event_name
                                     ELSE json_extract_string(e.properties, ks.key_path) END),
    checked AS (
        SELECT * EXCLUDE (meter_no, aggregation, residual),
               CASE WHEN residual IS NULL OR list_bool_and(list_transform(residual, lambda c:
                         list_contains(c.vals, json_extract_string(properties, c.path))))
                    THEN meter_no END AS meter_no,
               aggregation
        FROM candidates),
    valued AS (
        SELECT erow, layout, route_key, ts, ingested_at, file_no, source_row, meter_no,
               CASE WHEN meter_no IS NOT NULL THEN aggregation END AS aggregation, raw,
               CASE WHEN aggregation <> 'unique_count' AND raw IS NOT NULL
                    THEN {to_quantity("raw")} END AS number
        FROM (SELECT *, CASE WHEN meter_no IS NOT NULL AND aggregation <> 'count'
                             THEN json_extract_string(properties, value_path) END AS raw
              FROM checked))
    SELECT v.erow, v.ts, v.ingested_at, v.file_no, v.source_row, v.meter_no,
           CASE WHEN v.aggregation = 'unique_count' OR v.number IS NULL THEN v.raw END AS raw_value,
           CASE WHEN v.aggregation IN ('sum', 'max', 'min', 'latest') THEN v.number END AS value,
           CASE WHEN v.meter_no IS NULL THEN 'no_meter'
                WHEN v.aggregation = 'count' THEN 'ok'
                WHEN v.raw IS NULL THEN 'meter_event_value_not_found'
                WHEN v.aggregation = 'unique_count' THEN 'ok'
                WHEN v.number IS NULL THEN 'invalid_value'
                ELSE 'ok' END AS value_state,
           r.sub_no, p.period_no
    FROM valued AS v
    LEFT JOIN mt_routes AS r
      ON r.layout = v.layout AND r.route_key = v.route_key AND r.meter_no = v.meter_no
     AND r.valid_from <= v.ts AND v.ts < coalesce(r.valid_to, TIMESTAMP 'infinity')
    LEFT JOIN mt_periods AS p
      ON p.sub_no = r.sub_no AND p.period_start <= v.ts AND v.ts < p.period_end
"""

# A match counts when it lies in a period being closed (so it routed to that period's subscription) and
# has a usable value.
COUNTED = "period_no IS NOT NULL AND value_state = 'ok'"

# One row per (subscription, meter, period) with at least one counted event; the aggregation is the
# meter's. Each aggregation reads only its meters' rows, so that only unique_count rows go through
# DISTINCT. `latest` is the value of the greatest (ts, ingested_at), ties going to the greatest
# (source_file, source_row): the pair is packed in one HUGEINT (`recency`: ts, then ingested_at shifted
# to be non-negative) so that the search over all events is a plain max, and only the few events at the
# top are compared on their source.
CREATE_USAGE = f"""
    CREATE OR REPLACE TEMP TABLE mt_usage AS
    WITH counted AS NOT MATERIALIZED (
        SELECT m.*, k.aggregation
        FROM mt_matches AS m
        JOIN mt_meters AS k ON k.meter_no = m.meter_no
        WHERE {COUNTED}),
    plain AS (
        SELECT period_no, meter_no,
               CASE any_value(aggregation)
                   WHEN 'count' THEN CAST(count(*) AS DECIMAL(38, 12))
                   WHEN 'sum' THEN sum(value)
                   WHEN 'max' THEN max(value)
                   ELSE min(value)
               END AS quantity,
               count(*) AS event_count
        FROM counted
        WHERE aggregation IN ('count', 'sum', 'max', 'min')
        GROUP BY period_no, meter_no),
    latest_events AS NOT MATERIALIZED (
        SELECT period_no, meter_no, value, file_no, source_row,
               CAST(epoch_us(ts) AS HUGEINT) * 18446744073709551616
                   + (CAST(epoch_us(ingested_at) AS HUGEINT) + 9223372036854775808) AS recency
        FROM counted
        WHERE aggregation = 'latest'),
    latest_top AS (
        SELECT period_no, meter_no, max(recency) AS recency, count(*) AS event_count
        FROM latest_events
        GROUP BY period_no, meter_no),
    latest AS (
        SELECT e.period_no, e.meter_no, arg_max(e.value, (f.source_file, e.source_row, e.value)) AS quantity,
               any_value(t.event_count) AS event_count
        FROM latest_events AS e
        JOIN latest_top AS t
          ON t.period_no = e.period_no AND t.meter_no = e.meter_no AND t.recency = e.recency
        JOIN mt_files AS f ON f.file_no = e.file_no
        GROUP BY e.period_no, e.meter_no),
    uniques AS (
        SELECT period_no, meter_no, CAST(count(DISTINCT raw_value) AS DECIMAL(38, 12)) AS quantity,
               count(*) AS event_count
        FROM counted
        WHERE aggregation = 'unique_count'
        GROUP BY period_no, meter_no),
    usage AS (
        SELECT * FROM plain
        UNION ALL
        SELECT * FROM latest
        UNION ALL
        SELECT * FROM uniques)
    SELECT p.subscription_id, k.meter_id, p.period_start, p.period_end,
           CAST(u.quantity AS DECIMAL(38, 12)) AS quantity, u.event_count
    FROM usage AS u
    JOIN mt_periods AS p ON p.period_no = u.period_no
    JOIN mt_meters AS k ON k.meter_no = u.meter_no
"""

# Data issues about the window's events (SPEC 5), one row per event, or per (event, meter) for values:
#   no_meter                 the event matched no meter;
#   customer_not_found       a Stripe event (matching a meter) whose customer has no subscription at all;
#   subscription_not_found   it matched meters but routed to no subscription for any of them;
#   meter_event_value_not_found / invalid_value   a routed match whose value is missing / not a number.
# Only events with a row lacking a meter or a subscription are grouped (few); their fields come from
# usage_events by rowid.
CREATE_EXCEPTIONS = """
    CREATE OR REPLACE TEMP TABLE mt_exceptions AS
    WITH suspects AS (
        SELECT DISTINCT erow FROM mt_matches WHERE meter_no IS NULL OR sub_no IS NULL),
    per_event AS (
        SELECT m.erow, bool_or(m.meter_no IS NOT NULL) AS matched, bool_or(m.sub_no IS NOT NULL) AS routed,
               string_agg(DISTINCT k.meter_id, ', ' ORDER BY k.meter_id) AS meters
        FROM mt_matches AS m
        LEFT JOIN mt_meters AS k ON k.meter_no = m.meter_no
        WHERE m.erow IN (SELECT erow FROM suspects)
        GROUP BY m.erow),
    issues AS (
        SELECT erow, CASE WHEN matched THEN 'unrouted' ELSE 'no_meter' END AS issue, meters,
               CAST(NULL AS VARCHAR) AS meter_id, CAST(NULL AS VARCHAR) AS routed_to,
               CAST(NULL AS VARCHAR) AS raw_value
        FROM per_event WHERE NOT (matched AND routed)
        UNION ALL
        SELECT m.erow, m.value_state, NULL, k.meter_id, s.subscription_id, m.raw_value
        FROM mt_matches AS m
        JOIN mt_meters AS k ON k.meter_no = m.meter_no
        JOIN mt_subs AS s ON s.sub_no = m.sub_no
        WHERE m.sub_no IS NOT NULL AND m.value_state <> 'ok'),
    known_customers AS (SELECT DISTINCT customer_id FROM cat_subscriptions),
    detailed AS (
        SELECT i.*, e.event_id, e.layout, e.event_name, e.customer_id, e.subscription_id, e.ts,
               e.source_file, e.source_etag, e.source_row,
               c.customer_id IS NOT NULL AS customer_known,
               s.subscription_id IS NOT NULL AS subscription_known
        FROM issues AS i
        JOIN (SELECT rowid AS erow, * FROM usage_events WHERE rowid IN (SELECT erow FROM issues)) AS e
          ON e.erow = i.erow
        LEFT JOIN known_customers AS c ON c.customer_id = e.customer_id
        LEFT JOIN cat_subscriptions AS s ON s.subscription_id = e.subscription_id)
    SELECT CASE WHEN issue <> 'unrouted' THEN issue
                WHEN layout = 'stripe' AND NOT customer_known THEN 'customer_not_found'
                ELSE 'subscription_not_found' END AS code,
           event_id, coalesce(routed_to, subscription_id) AS subscription_id, customer_id, meter_id,
           source_file, source_etag, source_row,
           CASE
               WHEN issue = 'no_meter' AND layout = 'stripe'
                   THEN 'no meter matches event_name ' || coalesce('''' || event_name || '''', 'NULL')
               WHEN issue = 'no_meter' THEN 'no meter matches the properties of this Chargebee event'
               WHEN issue = 'invalid_value'
                   THEN 'meter ' || meter_id || ': the value ''' || raw_value || ''' is not a number'
               WHEN issue = 'meter_event_value_not_found'
                   THEN 'meter ' || meter_id || ' needs a value but the event has no such property'
               WHEN layout = 'stripe' AND NOT customer_known
                   THEN 'customer ' || customer_id || ' has no subscription in the catalog'
               WHEN layout = 'stripe'
                   THEN 'customer ' || customer_id || ' has no subscription active at '
                        || strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') || ' with a price on meter ' || meters
               WHEN NOT subscription_known
                   THEN 'subscription ' || subscription_id || ' is not in the catalog (usage kept: billed '
                        || 'once the subscription is added and the period closed again)'
               ELSE 'subscription ' || subscription_id || ' is not active at '
                    || strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') || ' or has no price on meter ' || meters
           END AS detail
    FROM detailed
"""

# --- writes: one transaction per close date, the date's rows replaced -------------------------------

DELETE_CLOSE_DATE = {
    table: f"DELETE FROM {table} WHERE close_date = $close_date"
    for table in ("closed_periods", "meter_usage", "metered_events", "usage_exceptions")
}

INSERT_CLOSED_PERIODS = """
    INSERT INTO closed_periods (close_date, subscription_id, customer_id, period_start, period_end,
                                closed_at, run_id)
    SELECT $close_date, subscription_id, customer_id, period_start, period_end, $closed_at, $run_id
    FROM mt_periods
"""

INSERT_METER_USAGE = """
    INSERT INTO meter_usage (close_date, subscription_id, meter_id, period_start, period_end, quantity,
                             event_count, closed_at)
    SELECT $close_date, subscription_id, meter_id, period_start, period_end, quantity, event_count,
           $closed_at
    FROM mt_usage
"""

INSERT_METERED_EVENTS = f"""
    INSERT INTO metered_events (close_date, subscription_id, meter_id, period_end, source_file,
                                source_etag, source_row)
    SELECT $close_date, p.subscription_id, k.meter_id, p.period_end, f.source_file, f.source_etag,
           m.source_row
    FROM (SELECT period_no, meter_no, file_no, source_row FROM mt_matches WHERE {COUNTED}) AS m
    JOIN mt_periods AS p ON p.period_no = m.period_no
    JOIN mt_meters AS k ON k.meter_no = m.meter_no
    JOIN mt_files AS f ON f.file_no = m.file_no
"""

INSERT_USAGE_EXCEPTIONS = """
    INSERT INTO usage_exceptions (close_date, code, event_id, subscription_id, customer_id, meter_id,
                                  source_file, source_etag, source_row, detail)
    SELECT $close_date, code, event_id, subscription_id, customer_id, meter_id, source_file, source_etag,
           source_row, detail
    FROM mt_exceptions
"""

WINDOW = "SELECT min(period_start), max(period_end) FROM {periods}"
EXCEPTION_COUNTS = "SELECT code, count(*) AS n FROM mt_exceptions GROUP BY code ORDER BY code"
USAGE_TOTALS = "SELECT count(*) AS usage_rows, coalesce(sum(event_count), 0) AS events FROM mt_usage"

DROP_WORKSPACE = [
    f"DROP TABLE IF EXISTS {t}"
    for t in (
        "mt_meters",
        "mt_sub_meters",
        "mt_subs",
        "mt_routes",
        "mt_files",
        "mt_matches",
        "mt_usage",
        "mt_exceptions",
        "mt_periods",
    )
]

# --- the usage_exceptions check: a close date's stored exceptions ---------------------------------

STORED_EXCEPTION_COUNTS = """
    SELECT code, count(*) AS n FROM usage_exceptions WHERE close_date = $close_date
    GROUP BY code ORDER BY code
"""
STORED_EXCEPTION_SAMPLES = """
    SELECT code, event_id, subscription_id, customer_id, meter_id, source_file, source_row, detail
    FROM usage_exceptions WHERE close_date = $close_date
    QUALIFY row_number() OVER (PARTITION BY code ORDER BY source_file, source_row, meter_id) <= $per_code
    ORDER BY code, source_file, source_row
"""
