"""Named SQL of the metering stage: match stored events to meters, subscriptions and closing periods.

Relations registered before these run (see meter.py):
  cat_subscriptions, cat_subscription_prices, cat_prices   the published catalog tables' rows (Arrow)
  mt_cat_meters      meter_id, event_name, aggregation, value_path, residual (list of {path, vals} | NULL)
  mt_cat_meter_keys  meter_id, key_path, value: the first filter of each filters-only (Chargebee) meter
  mt_cat_join_keys   key_path: the distinct first-filter paths (one NULL row when there is none)
  mt_periods         subscription_id, customer_id, period_start, period_end: the periods being closed
Paths are JSON pointers (RFC 6901) into the event's properties. Results land in TEMP tables (mt_*) that
the write statements copy, so that late-usage detection can re-meter without writing anything.
"""

from __future__ import annotations

# The (subscription, meter) pairs a subscription's metered prices bill.
CREATE_SUBSCRIPTION_METERS = """
    CREATE OR REPLACE TEMP TABLE mt_sub_meters AS
    SELECT DISTINCT s.subscription_id, s.customer_id, pr.meter_id, s.started_at, s.cancelled_at
    FROM cat_subscriptions AS s
    JOIN cat_subscription_prices AS sp ON sp.subscription_id = s.subscription_id
    JOIN cat_prices AS pr ON pr.price_id = sp.price_id
    WHERE pr.meter_id IS NOT NULL
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
        SELECT *, count(*) OVER (PARTITION BY customer_id, meter_id) AS holders FROM mt_sub_meters),
    shared AS (
        SELECT * FROM counted WHERE holders > 1),
    bounds AS (
        SELECT customer_id, meter_id, started_at AS b FROM shared
        UNION
        SELECT customer_id, meter_id, cancelled_at FROM shared WHERE cancelled_at IS NOT NULL),
    pieces AS (
        SELECT customer_id, meter_id, b AS valid_from,
               lead(b) OVER (PARTITION BY customer_id, meter_id ORDER BY b) AS valid_to
        FROM bounds),
    winners AS (
        SELECT p.customer_id, p.meter_id, p.valid_from, p.valid_to,
               arg_min(s.subscription_id, (s.started_at, s.subscription_id)) AS subscription_id
        FROM pieces AS p
        JOIN shared AS s
          ON s.customer_id = p.customer_id AND s.meter_id = p.meter_id
         AND s.started_at <= p.valid_from AND (s.cancelled_at IS NULL OR s.cancelled_at > p.valid_from)
        GROUP BY ALL)
    SELECT 'stripe' AS layout, customer_id AS route_key, meter_id, valid_from, valid_to, subscription_id
    FROM winners
    UNION ALL
    SELECT 'stripe', customer_id, meter_id, started_at, cancelled_at, subscription_id
    FROM counted WHERE holders = 1
    UNION ALL
    SELECT 'chargebee', subscription_id, meter_id, started_at, cancelled_at, subscription_id
    FROM mt_sub_meters
"""

# Every candidate (event, meter) pair of the window's events, and at least one row per event: meter_id is
# NULL on a row that matched nothing, so `no_meter` needs no anti-join over millions of events. Stripe
# events join meters on event_name; Chargebee events join filters-only meters on their first filter (an
# equi-join per distinct filter key); the remaining filters are checked on the joined pairs. Each match
# carries the subscription it routes to (NULL: none) and the end of the closing period it falls in
# (NULL: not in a period being closed). Properties are parsed only at the paths a row needs, and the
# table stays narrow: exceptions fetch event_id, customer, ... by rowid for the few events concerned.
CREATE_MATCHES = """
    CREATE OR REPLACE TEMP TABLE mt_matches AS
    WITH window_events AS NOT MATERIALIZED (
        SELECT rowid AS erow, layout, event_name, ts, ingested_at, source_file, source_etag, source_row,
               properties, CASE layout WHEN 'stripe' THEN customer_id ELSE subscription_id END AS route_key
        FROM usage_events
        WHERE ts >= $window_start AND ts < $window_end),
    candidates AS (
        SELECT e.*, m.meter_id, m.aggregation, m.value_path, m.residual
        FROM window_events AS e
        LEFT JOIN mt_cat_meters AS m ON m.event_name = e.event_name
        WHERE e.layout = 'stripe'
        UNION ALL
        SELECT e.*, m.meter_id, m.aggregation, m.value_path, m.residual
        FROM window_events AS e
        CROSS JOIN mt_cat_join_keys AS ks
        LEFT JOIN mt_cat_meter_keys AS k
          ON k.key_path = ks.key_path AND k.value = json_extract_string(e.properties, ks.key_path)
        LEFT JOIN mt_cat_meters AS m ON m.meter_id = k.meter_id
        WHERE e.layout = 'chargebee'),
    checked AS (
        SELECT * EXCLUDE (meter_id, aggregation, residual),
               CASE WHEN residual IS NULL OR list_bool_and(list_transform(residual, lambda c:
                         list_contains(c.vals, json_extract_string(properties, c.path))))
                    THEN meter_id END AS meter_id,
               aggregation
        FROM candidates),
    valued AS (
        SELECT erow, layout, route_key, ts, ingested_at, source_file, source_etag, source_row, meter_id,
               CASE WHEN meter_id IS NOT NULL THEN aggregation END AS aggregation, raw,
               TRY_CAST(raw AS DECIMAL(38, 12)) AS number
        FROM (SELECT *, CASE WHEN meter_id IS NOT NULL AND aggregation <> 'count'
                             THEN json_extract_string(properties, value_path) END AS raw
              FROM checked))
    SELECT v.erow, v.ts, v.ingested_at, v.source_file, v.source_etag, v.source_row, v.meter_id,
           v.aggregation,
           CASE WHEN v.aggregation = 'unique_count' OR v.number IS NULL THEN v.raw END AS raw_value,
           CASE WHEN v.aggregation IN ('sum', 'max', 'min', 'latest') THEN v.number END AS value,
           CASE WHEN v.meter_id IS NULL THEN 'no_meter'
                WHEN v.aggregation = 'count' THEN 'ok'
                WHEN v.raw IS NULL THEN 'meter_event_value_not_found'
                WHEN v.aggregation = 'unique_count' THEN 'ok'
                WHEN v.number IS NULL THEN 'invalid_value'
                ELSE 'ok' END AS value_state,
           r.subscription_id, p.period_end
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
# within a group. unique_count is computed apart so that only its rows go through DISTINCT; `latest` ties
# on ts go to the last ingested event (then file and row, for a stable answer).
CREATE_USAGE = f"""
    CREATE OR REPLACE TEMP TABLE mt_usage AS
    WITH usage AS (
        SELECT subscription_id, meter_id, period_end,
               CASE aggregation
                   WHEN 'count' THEN CAST(count(*) AS DECIMAL(38, 12))
                   WHEN 'sum' THEN sum(value)
                   WHEN 'max' THEN max(value)
                   WHEN 'min' THEN min(value)
                   WHEN 'latest' THEN arg_max(value, (ts, ingested_at, source_file, source_row))
                                      FILTER (WHERE aggregation = 'latest')
               END AS quantity,
               count(*) AS event_count
        FROM mt_matches
        WHERE {COUNTED} AND aggregation <> 'unique_count'
        GROUP BY subscription_id, meter_id, aggregation, period_end
        UNION ALL
        SELECT subscription_id, meter_id, period_end, CAST(count(DISTINCT raw_value) AS DECIMAL(38, 12)),
               count(*)
        FROM mt_matches
        WHERE {COUNTED} AND aggregation = 'unique_count'
        GROUP BY subscription_id, meter_id, period_end)
    SELECT u.subscription_id, u.meter_id, p.period_start, u.period_end,
           CAST(u.quantity AS DECIMAL(38, 12)) AS quantity, u.event_count
    FROM usage AS u
    JOIN mt_periods AS p ON p.subscription_id = u.subscription_id AND p.period_end = u.period_end
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
        SELECT DISTINCT erow FROM mt_matches WHERE meter_id IS NULL OR subscription_id IS NULL),
    per_event AS (
        SELECT erow, bool_or(meter_id IS NOT NULL) AS matched, bool_or(subscription_id IS NOT NULL) AS routed,
               string_agg(DISTINCT meter_id, ', ' ORDER BY meter_id) AS meters
        FROM mt_matches WHERE erow IN (SELECT erow FROM suspects)
        GROUP BY erow),
    issues AS (
        SELECT erow, CASE WHEN matched THEN 'unrouted' ELSE 'no_meter' END AS issue, meters,
               CAST(NULL AS VARCHAR) AS meter_id, CAST(NULL AS VARCHAR) AS routed_to,
               CAST(NULL AS VARCHAR) AS raw_value
        FROM per_event WHERE NOT (matched AND routed)
        UNION ALL
        SELECT erow, value_state, NULL, meter_id, subscription_id, raw_value
        FROM mt_matches
        WHERE subscription_id IS NOT NULL AND value_state <> 'ok'),
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

WINDOW = "SELECT min(period_start), max(period_end) FROM mt_periods"
EXCEPTION_COUNTS = "SELECT code, count(*) AS n FROM mt_exceptions GROUP BY code ORDER BY code"
USAGE_TOTALS = "SELECT count(*) AS usage_rows, coalesce(sum(event_count), 0) AS events FROM mt_usage"

DROP_WORKSPACE = [
    f"DROP TABLE IF EXISTS {t}"
    for t in ("mt_sub_meters", "mt_routes", "mt_matches", "mt_usage", "mt_exceptions", "mt_periods")
]
