"""The ledger's state: a key's newest version decides, a failing streak has a start, an acknowledgement
covers one version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from usage_pipeline.core.ingest.ledger import acknowledge, failing_keys, newest_with_rejects

T0 = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def conn(lake_conn):
    return lake_conn


def add(conn, key: str, etag: str, status: str, *, arrived: int, ingested: int, rejected: int = 0) -> None:
    """A ledger row; `arrived` and `ingested` are minutes after T0."""
    conn.execute(
        """INSERT INTO ingested_files VALUES ($key, $etag, 10, 'stripe', 'csv', $status, $reason, $detail,
                  $total, $accepted, 0, $rejected, $arrived, $ingested, 'run')""",
        {
            "key": key,
            "etag": etag,
            "status": status,
            "reason": "unreadable_file" if status == "failed" else None,
            "detail": f"{etag} is not gzip" if status == "failed" else None,
            "total": 2 * rejected,
            "accepted": rejected,
            "rejected": rejected,
            "arrived": T0 + timedelta(minutes=arrived),
            "ingested": T0 + timedelta(minutes=ingested),
        },
    )


def test_the_newest_version_decides_and_the_failing_streak_starts_after_the_last_good_one(conn):
    add(conn, "k.csv", "v1", "failed", arrived=0, ingested=1)
    add(conn, "k.csv", "v2", "succeeded", arrived=10, ingested=11)
    add(conn, "k.csv", "v3", "failed", arrived=20, ingested=21)
    add(conn, "k.csv", "v4", "failed", arrived=30, ingested=31)
    add(conn, "fixed.csv", "f1", "failed", arrived=0, ingested=1)
    add(conn, "fixed.csv", "f2", "skipped_empty", arrived=5, ingested=6)
    # Same LastModified second: the version ingested last is the newest.
    add(conn, "tie.csv", "t1", "succeeded", arrived=40, ingested=41)
    add(conn, "tie.csv", "t2", "failed", arrived=40, ingested=42)
    rows = failing_keys(conn)
    assert [(r["file_key"], r["etag"]) for r in rows] == [("k.csv", "v4"), ("tie.csv", "t2")]
    k = rows[0]
    assert k["failing_since"] == T0 + timedelta(minutes=21) and k["failed_versions"] == 2
    assert k["failed_reason"] == "unreadable_file" and k["acknowledged_by"] is None


def test_an_acknowledgement_covers_the_newest_version_only(conn):
    add(conn, "k.csv", "v1", "failed", arrived=0, ingested=1)
    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    ack = acknowledge(conn, "k.csv", by="ops", reason="vendor bug", now=now)
    assert ack is not None and (ack.etag, ack.status, ack.acknowledged_at) == (
        "v1",
        "failed",
        now.replace(tzinfo=None),
    )
    assert acknowledge(conn, "nope.csv", by="ops", reason="r", now=now) is None
    # Acknowledged again: one row, the newer word.
    acknowledge(conn, "k.csv", by="ops2", reason="really", now=now)
    (row,) = failing_keys(conn)
    assert (row["acknowledged_by"], row["acknowledged_reason"]) == ("ops2", "really")
    assert conn.execute("SELECT count(*) FROM file_acknowledgements").fetchall()[0][0] == 1

    add(conn, "k.csv", "v2", "failed", arrived=10, ingested=11)
    (row,) = failing_keys(conn)
    assert row["etag"] == "v2" and row["acknowledged_by"] is None


def test_rejects_are_judged_on_the_newest_version(conn):
    add(conn, "a.csv", "a1", "succeeded_with_errors", arrived=0, ingested=1, rejected=3)
    add(conn, "a.csv", "a2", "succeeded", arrived=10, ingested=11)
    add(conn, "b.csv", "b1", "succeeded_with_errors", arrived=0, ingested=2, rejected=1)
    add(conn, "c.csv", "c1", "succeeded_with_errors", arrived=0, ingested=3, rejected=2)
    acknowledge(conn, "c.csv", by="ops", reason="known", now=datetime.now(UTC))
    rows = newest_with_rejects(conn)
    assert [(r["file_key"], r["rows_rejected"], r["acknowledged_by"]) for r in rows] == [
        ("b.csv", 1, None),
        ("c.csv", 2, "ops"),
    ]
