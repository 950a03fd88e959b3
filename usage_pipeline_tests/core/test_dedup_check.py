"""The dedup_keys_unique check finds every key stored twice in the run's window, by SPEC 4's keys."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from usage_pipeline.core.ingest.findings import dedup_keys_unique

RUN_STARTED = datetime(2026, 11, 30, 12, 0)
TS = datetime(2026, 11, 30, 9, 0)


def store(conn: duckdb.DuckDBPyConnection, rows: list[tuple], ingested_at: datetime = RUN_STARTED) -> None:
    """(event_id, layout, customer, subscription, ts, source_file, source_row) straight into the table,
    past the writer's deduplication: what a faulty writer or a race would leave."""
    for event_id, layout, customer, subscription, ts, source, row in rows:
        conn.execute(
            "INSERT INTO usage_events VALUES (?, ?, 'api_call', ?, ?, ?, '{}', ?, 'etag', ?, ?)",
            [event_id, layout, customer, subscription, ts, source, row, ingested_at],
        )


def test_distinct_keys_pass(lake_conn: duckdb.DuckDBPyConnection) -> None:
    store(
        lake_conn,
        [
            ("e1", "stripe", "cus_1", None, TS, "a.csv", 1),
            ("e1", "stripe", "cus_2", None, TS, "a.csv", 2),  # another customer's e1
            ("d1", "chargebee", None, "sub_1", TS, "b.csv", 1),
            ("d1", "chargebee", None, "sub_1", TS + timedelta(milliseconds=1), "b.csv", 2),  # another ts
        ],
    )
    finding = dedup_keys_unique(lake_conn, RUN_STARTED, timedelta(hours=24))
    assert finding.passed, finding.summary
    assert finding.counts == {"duplicate_keys": 0, "events_written": 4}


def test_keys_stored_twice_fail_with_their_sources(lake_conn: duckdb.DuckDBPyConnection) -> None:
    earlier = RUN_STARTED - timedelta(days=1)
    store(lake_conn, [("e1", "stripe", "cus_1", None, TS - timedelta(hours=20), "old.csv", 7)], earlier)
    store(
        lake_conn,
        [
            ("e1", "stripe", "cus_1", None, TS, "new.csv", 1),  # a Stripe twin, hours apart
            ("d1", "chargebee", None, "sub_1", TS, "b.csv", 1),
            ("d1", "chargebee", None, "sub_1", TS, "c.csv", 4),
            ("e9", "stripe", "cus_1", None, TS, "new.csv", 2),
        ],
    )
    finding = dedup_keys_unique(lake_conn, RUN_STARTED, timedelta(hours=24))
    assert not finding.passed
    assert finding.counts == {"duplicate_keys": 2, "events_written": 4}
    found = {(d["layout"], d["owner_id"], d["event_id"]): d for d in finding.examples["duplicate keys"]}
    assert set(found) == {("stripe", "cus_1", "e1"), ("chargebee", "sub_1", "d1")}
    assert sorted(str(found[("stripe", "cus_1", "e1")]["sources"]).split(", ")) == ["new.csv#1", "old.csv#7"]


def test_twins_outside_the_window_are_not_looked_at(lake_conn: duckdb.DuckDBPyConnection) -> None:
    long_ago = RUN_STARTED - timedelta(days=9)
    store(lake_conn, [("e1", "stripe", "cus_1", None, TS - timedelta(days=3), "old.csv", 1)], long_ago)
    store(lake_conn, [("e1", "stripe", "cus_1", None, TS, "new.csv", 1)])
    assert dedup_keys_unique(lake_conn, RUN_STARTED, timedelta(hours=24)).passed
