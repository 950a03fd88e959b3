"""Named SQL statements of the ingest stage (DuckDB)."""

from __future__ import annotations

LEDGER_ROW = """
    SELECT size_bytes, status, layout, failed_reason, failed_detail, rows_total, rows_accepted,
           rows_duplicate, rows_rejected
    FROM ingested_files WHERE file_key = $file_key AND etag = $etag
"""

INSERT_LEDGER = """
    INSERT INTO ingested_files (
        file_key, etag, size_bytes, layout, format, status, failed_reason, failed_detail,
        rows_total, rows_accepted, rows_duplicate, rows_rejected, arrived_at, ingested_at, run_id)
    VALUES ($file_key, $etag, $size_bytes, $layout, $format, $status, $failed_reason, $failed_detail,
            $rows_total, $rows_accepted, $rows_duplicate, $rows_rejected, $arrived_at, $ingested_at, $run_id)
"""

# The versions asked about are registered as the relation `asked` (file_key, etag).
LEDGERED_VERSIONS = """
    SELECT f.file_key, f.etag FROM ingested_files AS f
    SEMI JOIN asked AS a ON a.file_key = f.file_key AND a.etag = f.etag
"""

# --- file_attempts: versions taken up by a run that have no ledger row yet -----------------------------

ATTEMPTS_OF = """
    SELECT t.file_key, t.etag, t.attempts, t.last_attempt_at, t.last_run_id, t.last_error
    FROM file_attempts AS t
    SEMI JOIN asked AS a ON a.file_key = t.file_key AND a.etag = t.etag
"""

# A run takes up its versions: one more attempt each (a first attempt creates the row). `asked` holds
# (file_key, etag, size_bytes, arrived_at) of the versions not in the ledger; the rows computed here
# replace theirs (DELETE_ATTEMPTS_OF_ASKED, then INSERT_ATTEMPTS).
NEXT_ATTEMPTS = """
    SELECT a.file_key, a.etag, a.size_bytes, a.arrived_at,
           coalesce(t.attempts, 0) + 1, coalesce(t.first_attempt_at, $now), $now, $run_id,
           -- an attempt that ended without a word (its process was killed) says so for the next one
           CASE WHEN t.file_key IS NOT NULL AND t.last_error IS NULL
                THEN 'attempt ' || t.attempts || ' (run ' || coalesce(t.last_run_id, '?')
                     || ') ended without a result: its process was killed or lost'
                ELSE t.last_error END AS last_error
    FROM asked AS a
    LEFT JOIN file_attempts AS t ON t.file_key = a.file_key AND t.etag = a.etag
"""

INSERT_ATTEMPTS = "INSERT INTO file_attempts SELECT * FROM next_attempts"

DELETE_ATTEMPTS_OF_ASKED = """
    DELETE FROM file_attempts AS t
    WHERE EXISTS (SELECT 1 FROM asked AS a WHERE a.file_key = t.file_key AND a.etag = t.etag)
"""

RECORD_ATTEMPT_ERROR = """
    UPDATE file_attempts SET last_error = $error, last_run_id = $run_id
    WHERE file_key = $file_key AND etag = $etag
"""

DELETE_ATTEMPT = "DELETE FROM file_attempts WHERE file_key = $file_key AND etag = $etag"

# Versions still waiting for a ledger row, oldest first. An attempt row whose version reached the ledger
# cannot exist (the ledger transaction deletes it); the anti-join keeps the answer true regardless.
WAITING_FILES = """
    SELECT t.file_key, t.etag, t.size_bytes, t.arrived_at, t.attempts, t.first_attempt_at,
           t.last_attempt_at, t.last_run_id, t.last_error
    FROM file_attempts AS t
    ANTI JOIN ingested_files AS f ON f.file_key = t.file_key AND f.etag = t.etag
    ORDER BY t.first_attempt_at, t.file_key
"""

# The ledger columns of a FileOutcome, in its field order.
_OUTCOME_COLUMNS = """file_key, etag, size_bytes, status, layout, failed_reason, failed_detail,
           rows_total, rows_accepted, rows_duplicate, rows_rejected"""

OUTCOMES_OF_RUNS = f"""
    SELECT {_OUTCOME_COLUMNS}
    FROM ingested_files WHERE run_id IN (SELECT unnest($runs))
    ORDER BY arrived_at, file_key
"""

# The ledger rows of the versions ($keys[i], $etags[i]), with the run that wrote each.
OUTCOMES_OF_VERSIONS = f"""
    SELECT {_OUTCOME_COLUMNS}, run_id
    FROM ingested_files
    WHERE (file_key, etag) IN (SELECT (unnest($keys), unnest($etags)))
    ORDER BY arrived_at, file_key
"""

REJECT_CODES_OF_RUNS = """
    SELECT r.error_code, count(*) FROM rejected_events AS r
    JOIN ingested_files AS f ON f.file_key = r.source_file AND f.etag = r.source_etag
    WHERE f.run_id IN (SELECT unnest($runs)) GROUP BY ALL ORDER BY 2 DESC
"""

# --- the state of the ledger: the newest version of each key, and acknowledgements ----------------------

# A key's newest version is the one that arrived last (then the one ingested last): it alone says whether
# the key is in trouble now. Versions are numbered per key, 1 = newest.
_AGE = "row_number() OVER (PARTITION BY file_key ORDER BY arrived_at DESC, ingested_at DESC)"

# Keys whose newest version failed, oldest failure first. `failing_since` is when the first failed
# version after the key's newest good one was ingested; the acknowledgement columns are NULL unless an
# operator acknowledged that newest version.
FAILING_KEYS = f"""
    WITH ranked AS (
        SELECT file_key, etag, status, failed_reason, failed_detail, arrived_at, ingested_at, run_id,
               {_AGE} AS age
        FROM ingested_files),
    streaks AS (
        SELECT *, min(age) FILTER (WHERE status <> 'failed') OVER (PARTITION BY file_key) AS newest_good
        FROM ranked),
    failing AS (
        SELECT file_key, min(ingested_at) AS failing_since, count(*) AS failed_versions FROM streaks
        WHERE age < coalesce(newest_good, 9223372036854775807)
        GROUP BY file_key)
    SELECT n.file_key, n.etag, n.failed_reason, n.failed_detail, n.arrived_at, n.ingested_at, n.run_id,
           s.failing_since, s.failed_versions,
           a.acknowledged_by, a.acknowledged_at, a.reason AS acknowledged_reason
    FROM streaks AS n
    JOIN failing AS s ON s.file_key = n.file_key
    LEFT JOIN file_acknowledgements AS a ON a.file_key = n.file_key AND a.etag = n.etag
    WHERE n.age = 1 AND n.status = 'failed'
    ORDER BY s.failing_since, n.file_key
"""

# Newest versions that have rejected rows, oldest first, with their acknowledgement (NULL when none).
NEWEST_WITH_REJECTS = f"""
    SELECT n.file_key, n.etag, n.status, n.rows_total, n.rows_rejected, n.arrived_at, n.ingested_at,
           n.run_id, a.acknowledged_by, a.acknowledged_at, a.reason AS acknowledged_reason
    FROM (SELECT *, {_AGE} AS age FROM ingested_files) AS n
    LEFT JOIN file_acknowledgements AS a ON a.file_key = n.file_key AND a.etag = n.etag
    WHERE n.age = 1 AND n.rows_rejected > 0
    ORDER BY n.ingested_at, n.file_key
"""

# The rejects of the versions ($keys[i], $etags[i]) only. A version's rejects carry its ledger row's
# ingested_at, so `$since` (the oldest of theirs) lets DuckDB skip every older row group.
_REJECTS_OF_VERSIONS = """
    FROM rejected_events AS r
    WHERE r.ingested_at >= $since
      AND (r.source_file, r.source_etag) IN (SELECT (unnest($keys), unnest($etags)))
"""

REJECT_CODE_COUNTS = f"""
    SELECT r.error_code, count(*) AS n {_REJECTS_OF_VERSIONS}
    GROUP BY ALL ORDER BY n DESC, r.error_code
"""

# A few rows of each code of each version, so that every kind of problem shows in a short sample.
REJECT_SAMPLES = f"""
    SELECT r.source_file, r.source_row, r.error_code, r.error_message, left(r.raw_record, 200) AS raw_record
    {_REJECTS_OF_VERSIONS}
    QUALIFY row_number() OVER (PARTITION BY r.source_file, r.source_etag, r.error_code
                               ORDER BY r.source_row) <= 3
    ORDER BY r.ingested_at, r.source_file, r.source_row
    LIMIT $limit
"""

NEWEST_VERSION_OF_KEY = f"""
    SELECT file_key, etag, status, failed_reason, rows_rejected, arrived_at FROM ingested_files
    WHERE file_key = $file_key
    QUALIFY {_AGE} = 1
"""

DELETE_ACKNOWLEDGEMENT = "DELETE FROM file_acknowledgements WHERE file_key = $file_key AND etag = $etag"

INSERT_ACKNOWLEDGEMENT = """
    INSERT INTO file_acknowledgements (file_key, etag, acknowledged_by, acknowledged_at, reason)
    VALUES ($file_key, $etag, $acknowledged_by, $acknowledged_at, $reason)
"""

# The candidate batch is registered as the relation `batch`. Deduplication against history only scans
# stored events inside the batch's event-time range ($ts_lo, $ts_hi): DuckDB prunes row groups on their
# `ts` min/max, so the cost follows the batch's time window, not the size of the history. An anti join,
# not NOT EXISTS: DuckDB runs a correlated NOT EXISTS as a delim join, which first copies the whole batch
# into memory (GBs for a big file); the anti join streams the batch past the stored keys in range.
_INSERT_NEW_EVENTS = """
    INSERT INTO usage_events
    SELECT b.event_id, b.layout, b.event_name, b.customer_id, b.subscription_id, b.ts,
           b.properties, b.source_file, b.source_etag, b.source_row, $ingested_at
    FROM batch AS b
    ANTI JOIN (
        SELECT {key} FROM usage_events
        WHERE ts BETWEEN $ts_lo AND $ts_hi AND layout = '{layout}'
    ) AS e ON {same_key}
"""

# SPEC 4 dedup keys: Chargebee (subscription_id, usage_timestamp, deduplication_id); Stripe (customer, id).
INSERT_NEW_CHARGEBEE_EVENTS = _INSERT_NEW_EVENTS.format(
    layout="chargebee",
    key="subscription_id, ts, event_id",
    same_key="e.subscription_id = b.subscription_id AND e.ts = b.ts AND e.event_id = b.event_id",
)
INSERT_NEW_STRIPE_EVENTS = _INSERT_NEW_EVENTS.format(
    layout="stripe",
    key="customer_id, event_id",
    same_key="e.customer_id = b.customer_id AND e.event_id = b.event_id",
)

# A big file's chunks, spilled to Parquet files on local disk ({files}: a SQL list of their paths), as the
# relations the statements here read: `batch` without the events whose key an earlier chunk had (their
# source rows registered as `dropped`), and `rejects`. One statement then writes the whole file, as for
# a file read in one piece, with DuckDB streaming the files instead of Python handing it frames.
SPILLED_BATCH = """
    CREATE OR REPLACE TEMP VIEW batch AS
    SELECT * FROM read_parquet({files}) AS b
    WHERE b.source_row NOT IN (SELECT source_row FROM dropped)
"""
SPILLED_REJECTS = "CREATE OR REPLACE TEMP VIEW rejects AS SELECT * FROM read_parquet({files})"
DROP_SPILLED = "DROP VIEW IF EXISTS {name}"

# --- a group of small files in one transaction ---------------------------------------------------------

# The candidate events of several files are registered as `group_batch`: the event columns plus the file's
# place in the group (`ordinal`, arrival order) and its dedup window (`win_lo`, `win_hi`: the file's own
# event-time range, widened by the Stripe window). A candidate is new when no stored twin lies in its
# file's window and no earlier file of the group holds a twin in that window, exactly what each file's
# own transaction would have found one after the other (the group's earlier files stored theirs first).
# `$ts_lo`, `$ts_hi` span every file's window, so DuckDB still prunes stored row groups on `ts`.
# Written as ANTI JOINs on the key with the window as a residual condition: hash joins (a correlated
# NOT EXISTS with range conditions is planned as a much slower delim join).
_NEW_EVENTS_OF_GROUP = """
    SELECT b.* FROM group_batch AS b
    ANTI JOIN (SELECT * FROM usage_events WHERE ts BETWEEN $ts_lo AND $ts_hi AND layout = '{layout}') AS e
        ON {same_key} AND e.ts BETWEEN b.win_lo AND b.win_hi
    ANTI JOIN group_batch AS e
        ON {same_key} AND e.ordinal < b.ordinal AND e.ts BETWEEN b.win_lo AND b.win_hi
"""
NEW_CHARGEBEE_EVENTS_OF_GROUP = _NEW_EVENTS_OF_GROUP.format(
    layout="chargebee",
    same_key="e.subscription_id = b.subscription_id AND e.ts = b.ts AND e.event_id = b.event_id",
)
NEW_STRIPE_EVENTS_OF_GROUP = _NEW_EVENTS_OF_GROUP.format(
    layout="stripe", same_key="e.customer_id = b.customer_id AND e.event_id = b.event_id"
)

INSERT_GROUP_EVENTS = """
    INSERT INTO usage_events
    SELECT event_id, layout, event_name, customer_id, subscription_id, ts, properties, source_file,
           source_etag, source_row, $ingested_at
    FROM new_group_events
"""

ACCEPTED_PER_FILE = "SELECT ordinal, count(*) FROM new_group_events GROUP BY ordinal"

# The group's ledger rows, registered as `ledger_rows` in the table's column order.
INSERT_LEDGER_ROWS = "INSERT INTO ingested_files SELECT * FROM ledger_rows"

INSERT_REJECTS = """
    INSERT INTO rejected_events
    SELECT source_file, source_etag, source_row, error_code, error_message, raw_record, $ingested_at
    FROM rejects
"""

# --- asset checks ------------------------------------------------------------------------------------

# Ledger rows whose counts do not add up, or disagree with the rows actually stored for the file version.
# `$since` limits the scan of the event tables to what this run wrote (ingested_at only grows, so DuckDB
# skips older row groups).
UNBALANCED_FILES = """
    WITH run_files AS (
        SELECT file_key, etag, rows_total, rows_accepted, rows_duplicate, rows_rejected
        FROM ingested_files WHERE run_id = $run_id AND ingested_at >= $since),
    stored AS (
        SELECT source_file, source_etag, count(*) AS n FROM usage_events
        WHERE ingested_at >= $since GROUP BY ALL),
    rejected AS (
        SELECT source_file, source_etag, count(*) AS n FROM rejected_events
        WHERE ingested_at >= $since GROUP BY ALL)
    SELECT f.file_key, f.etag, f.rows_total, f.rows_accepted, f.rows_duplicate, f.rows_rejected,
           coalesce(s.n, 0) AS events_stored, coalesce(r.n, 0) AS rejects_stored
    FROM run_files AS f
    LEFT JOIN stored AS s ON s.source_file = f.file_key AND s.source_etag = f.etag
    LEFT JOIN rejected AS r ON r.source_file = f.file_key AND r.source_etag = f.etag
    WHERE f.rows_total <> f.rows_accepted + f.rows_duplicate + f.rows_rejected
       OR coalesce(s.n, 0) <> f.rows_accepted
       OR coalesce(r.n, 0) <> f.rows_rejected
    ORDER BY f.file_key
    LIMIT 50
"""

UNBALANCED_LEDGER_COUNT = """
    SELECT count(*) FROM ingested_files
    WHERE rows_total <> rows_accepted + rows_duplicate + rows_rejected
"""

RUN_EVENT_TIME_RANGE = """
    SELECT min(ts), max(ts), count(*) FROM usage_events WHERE ingested_at >= $since
"""

_DEDUP_KEY_HASH = """hash(layout, CASE layout WHEN 'stripe' THEN customer_id ELSE subscription_id END,
                             event_id, CASE layout WHEN 'chargebee' THEN ts END)"""

# The hashes of dedup keys (SPEC 4) seen more than once among stored events in a time range: one pass
# grouping a number, not three strings (twice as fast on millions of rows). A hash shared by two different
# keys is only a candidate: DUPLICATE_KEYS then counts the keys themselves.
DUPLICATE_KEY_HASHES = f"""
    SELECT {_DEDUP_KEY_HASH} AS key_hash FROM usage_events
    WHERE ts BETWEEN $ts_lo AND $ts_hi
    GROUP BY key_hash
    HAVING count(*) > 1
    LIMIT 1000
"""

# Dedup keys (SPEC 4) that occur more than once among stored events in a time range, among the candidate
# hashes $hashes.
DUPLICATE_KEYS = f"""
    SELECT layout,
           CASE layout WHEN 'stripe' THEN customer_id ELSE subscription_id END AS owner_id,
           event_id,
           CASE layout WHEN 'chargebee' THEN ts END AS key_ts,
           count(*) AS copies,
           string_agg(source_file || '#' || source_row, ', ') AS sources
    FROM usage_events
    WHERE ts BETWEEN $ts_lo AND $ts_hi AND {_DEDUP_KEY_HASH} IN (SELECT unnest($hashes))
    GROUP BY ALL
    HAVING count(*) > 1
    ORDER BY copies DESC, owner_id, event_id
    LIMIT 20
"""
