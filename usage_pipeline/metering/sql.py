"""Named SQL of the metering stage: match stored events to meters, subscriptions and closing periods.

The catalog is registered as Arrow relations before these run (see meter.py):
  mt_cat_meters      meter_id, event_name, aggregation, value_idx, residual (list of {idx, vals} or NULL)
  mt_cat_meter_keys  meter_id, key_idx, value: the first filter of each filters-only (Chargebee) meter
  mt_cat_sub_meters  subscription_id, customer_id, meter_id, started_at, cancelled_at (metered prices)
  mt_cat_subs        subscription_id, customer_id (every subscription)
  mt_periods         subscription_id, customer_id, period_start, period_end (the periods being closed)
`idx` / `value_idx` / `key_idx` index the list `pv` of property values parsed once per event with the
JSON pointers `$paths`. Results land in TEMP tables (mt_*) that the write statements copy, so that late
usage detection can re-meter without writing anything.
"""

from __future__ import annotations

# Stripe-layout routing: per (customer, meter) the timeline is cut at every started_at / cancelled_at of
# the customer's subscriptions pricing that meter; in each piece the winner is the active subscription
# with the earliest started_at, then the smallest id (SPEC 7). Each event then joins exactly one piece,
# so the per-event "pick one" happens on the catalog (small), never with a group-by over events.
# Chargebee-layout routing is the subscription itself while it is active.
CREATE_ROUTES = """
    CREATE OR REPLACE TEMP TABLE mt_routes AS
    WITH bounds AS (
        SELECT customer_id, meter_id, started_at AS b FROM mt_cat_sub_meters
        UNION
        SELECT customer_id, meter_id, cancelled_at FROM mt_cat_sub_meters WHERE cancelled_at IS NOT NULL),
    pieces AS (
        SELECT customer_id, meter_id, b AS valid_from,
               lead(b) OVER (PARTITION BY customer_id, meter_id ORDER BY b) AS valid_to
        FROM bounds),
    winners AS (
        SELECT p.customer_id, p.meter_id, p.valid_from, p.valid_to,
               arg_min(s.subscription_id, (s.started_at, s.subscription_id)) AS subscription_id
        FROM pieces AS p
        JOIN mt_cat_sub_meters AS s
          ON s.customer_id = p.customer_id AND s.meter_id = p.meter_id
         AND s.started_at <= p.valid_from AND (s.cancelled_at IS NULL OR s.cancelled_at > p.valid_from)
        GROUP BY ALL)
    SELECT 'stripe' AS layout, customer_id AS route_key, meter_id, valid_from, valid_to, subscription_id
    FROM winners
    UNION ALL
    SELECT 'chargebee', subscription_id, meter_id, started_at, cancelled_at, subscription_id
    FROM mt_cat_sub_meters
"""

# The events of the close window, with the properties the catalog looks at parsed once.
CREATE_WINDOW_EVENTS = """
    CREATE OR REPLACE TEMP TABLE mt_events AS
    SELECT rowid AS erow, event_id, layout, event_name, customer_id, subscription_id, ts, ingested_at,
           source_file, source_etag, source_row,
           CASE layout WHEN 'stripe' THEN customer_id ELSE subscription_id END AS route_key,
           json_extract_string(properties, $paths) AS pv
    FROM usage_events
    WHERE ts >= $window_start AND ts < $window_end
"""

_RESIDUAL_OK = (
    "(m.residual IS NULL OR "
    "list_bool_and(list_transform(m.residual, lambda c: list_contains(c.vals, e.pv[c.idx]))))"
)

# Every (event, meter) pair that matches, with the subscription it routes to (NULL: none) and the
# closing period it falls in (NULL: not in a period being closed). Stripe events join meters on
# event_name; Chargebee events join filters-only meters on their first filter (an equi-join per filter
# key), the other filters being checked on the joined pairs.
CREATE_MATCHES = f"""
    CREATE OR REPLACE TEMP TABLE mt_matches AS
    WITH matched AS (
        SELECT e.*, m.meter_id, m.aggregation, e.pv[m.value_idx] AS raw_value
        FROM mt_events AS e
        JOIN mt_cat_meters AS m ON m.event_name = e.event_name
        WHERE e.layout = 'stripe' AND {_RESIDUAL_OK}
        UNION ALL
        SELECT e.*, m.meter_id, m.aggregation, e.pv[m.value_idx] AS raw_value
        FROM mt_events AS e
        CROSS JOIN (SELECT DISTINCT key_idx FROM mt_cat_meter_keys) AS ks
        JOIN mt_cat_meter_keys AS k ON k.key_idx = ks.key_idx AND k.value = e.pv[ks.key_idx]
        JOIN mt_cat_meters AS m ON m.meter_id = k.meter_id
        WHERE e.layout = 'chargebee' AND {_RESIDUAL_OK}),
    valued AS (
        SELECT *, TRY_CAST(raw_value AS DECIMAL(38, 12)) AS value FROM matched)
    SELECT v.erow, v.event_id, v.layout, v.event_name, v.customer_id,
           v.subscription_id AS event_subscription_id, v.ts, v.ingested_at,
           v.source_file, v.source_etag, v.source_row, v.meter_id, v.aggregation, v.raw_value, v.value,
           CASE WHEN v.aggregation = 'count' THEN 'ok'
                WHEN v.raw_value IS NULL THEN 'meter_event_value_not_found'
                WHEN v.aggregation = 'unique_count' THEN 'ok'
                WHEN v.value IS NULL THEN 'invalid_value'
                ELSE 'ok' END AS value_state,
           r.subscription_id, p.period_start, p.period_end
    FROM valued AS v
    LEFT JOIN mt_routes AS r
      ON r.layout = v.layout AND r.route_key = v.route_key AND r.meter_id = v.meter_id
     AND r.valid_from <= v.ts AND (r.valid_to IS NULL OR v.ts < r.valid_to)
    LEFT JOIN mt_periods AS p
      ON p.subscription_id = r.subscription_id AND p.period_start <= v.ts AND v.ts < p.period_end
"""

# A match counts when it routed to a subscription, lies in a period being closed and has a usable value.
COUNTED = "subscription_id IS NOT NULL AND period_end IS NOT NULL AND value_state = 'ok'"

# One row per (subscription, meter, period) with at least one counted event. The aggregation is constant
# within a group; FILTER keeps each aggregate to the groups that use it.
CREATE_USAGE = f"""
    CREATE OR REPLACE TEMP TABLE mt_usage AS
    SELECT subscription_id, meter_id, period_start, period_end,
           CAST(CASE aggregation
                WHEN 'count' THEN CAST(count(*) AS DECIMAL(38, 12))
                WHEN 'sum' THEN sum(value) FILTER (WHERE aggregation = 'sum')
                WHEN 'max' THEN max(value) FILTER (WHERE aggregation = 'max')
                WHEN 'min' THEN min(value) FILTER (WHERE aggregation = 'min')
                WHEN 'latest' THEN arg_max(value, (ts, ingested_at, source_file, source_row))
                                   FILTER (WHERE aggregation = 'latest')
                WHEN 'unique_count' THEN CAST(count(DISTINCT raw_value)
                                              FILTER (WHERE aggregation = 'unique_count') AS DECIMAL(38, 12))
                END AS DECIMAL(38, 12)) AS quantity,
           count(*) AS event_count
    FROM mt_matches
    WHERE {COUNTED}
    GROUP BY subscription_id, meter_id, aggregation, period_start, period_end
"""

# Data issues about the window's events (SPEC 5). An event that matched no meter is `no_meter`; one that
# matched meters but routed to no subscription for any of them is `customer_not_found` (Stripe customer
# without any subscription) or `subscription_not_found`; a routed match whose value is missing or not a
# number is reported per meter.
CREATE_EXCEPTIONS = """
    CREATE OR REPLACE TEMP TABLE mt_exceptions AS
    WITH unrouted AS (
        SELECT * FROM mt_matches WHERE subscription_id IS NULL),
    routed_elsewhere AS (
        SELECT DISTINCT erow FROM mt_matches
        WHERE subscription_id IS NOT NULL AND erow IN (SELECT erow FROM unrouted)),
    stranded AS (
        SELECT erow, any_value(event_id) AS event_id, any_value(layout) AS layout,
               any_value(customer_id) AS customer_id, any_value(event_subscription_id) AS subscription_id,
               any_value(ts) AS ts, any_value(source_file) AS source_file,
               any_value(source_etag) AS source_etag, any_value(source_row) AS source_row,
               string_agg(DISTINCT meter_id, ', ' ORDER BY meter_id) AS meters
        FROM unrouted WHERE erow NOT IN (SELECT erow FROM routed_elsewhere)
        GROUP BY erow)
    SELECT 'no_meter' AS code, e.event_id, e.subscription_id, e.customer_id, NULL AS meter_id,
           e.source_file, e.source_etag, e.source_row,
           CASE e.layout
               WHEN 'stripe' THEN 'no meter matches event_name ' || coalesce('''' || e.event_name || '''', 'NULL')
               ELSE 'no meter matches the properties of this Chargebee event' END AS detail
    FROM mt_events AS e
    WHERE NOT EXISTS (SELECT 1 FROM mt_matches AS m WHERE m.erow = e.erow)
    UNION ALL
    SELECT CASE WHEN s.layout = 'stripe' AND c.customer_id IS NULL THEN 'customer_not_found'
                ELSE 'subscription_not_found' END,
           s.event_id, s.subscription_id, s.customer_id, NULL, s.source_file, s.source_etag, s.source_row,
           CASE
               WHEN s.layout = 'stripe' AND c.customer_id IS NULL
                   THEN 'customer ' || s.customer_id || ' has no subscription in the catalog'
               WHEN s.layout = 'stripe'
                   THEN 'customer ' || s.customer_id || ' has no subscription active at '
                        || strftime(s.ts, '%Y-%m-%dT%H:%M:%S.%gZ') || ' with a price on meter ' || s.meters
               WHEN k.subscription_id IS NULL
                   THEN 'subscription ' || s.subscription_id || ' is not in the catalog (usage kept: it is '
                        || 'billed when the subscription is added and the period closed again)'
               ELSE 'subscription ' || s.subscription_id || ' is not active at '
                    || strftime(s.ts, '%Y-%m-%dT%H:%M:%S.%gZ') || ' or has no price on meter ' || s.meters
           END
    FROM stranded AS s
    LEFT JOIN (SELECT DISTINCT customer_id FROM mt_cat_subs) AS c ON c.customer_id = s.customer_id
    LEFT JOIN mt_cat_subs AS k ON k.subscription_id = s.subscription_id
    UNION ALL
    SELECT value_state, event_id, subscription_id, customer_id, meter_id,
           source_file, source_etag, source_row,
           CASE value_state
               WHEN 'invalid_value' THEN 'meter ' || meter_id || ': value_property is '
                                         || '''' || raw_value || ''', not a number'
               ELSE 'meter ' || meter_id || ' needs a value but the event has no such property' END
    FROM mt_matches
    WHERE subscription_id IS NOT NULL AND value_state <> 'ok'
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
    SELECT $close_date, subscription_id, meter_id, period_end, source_file, source_etag, source_row
    FROM mt_matches
    WHERE {COUNTED}
"""

INSERT_USAGE_EXCEPTIONS = """
    INSERT INTO usage_exceptions (close_date, code, event_id, subscription_id, customer_id, meter_id,
                                  source_file, source_etag, source_row, detail)
    SELECT $close_date, code, event_id, subscription_id, customer_id, meter_id, source_file, source_etag,
           source_row, detail
    FROM mt_exceptions
"""

EXCEPTION_COUNTS = "SELECT code, count(*) AS n FROM mt_exceptions GROUP BY code ORDER BY code"
USAGE_TOTALS = "SELECT count(*) AS usage_rows, coalesce(sum(event_count), 0) AS events FROM mt_usage"

DROP_WORKSPACE = [
    f"DROP TABLE IF EXISTS {t}"
    for t in ("mt_routes", "mt_events", "mt_matches", "mt_usage", "mt_exceptions", "mt_periods")
]
