"""What the UI shows: typed metadata tables, the standard table keys, owners, tags and descriptions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import dagster as dg
import duckdb

from usage_pipeline.core.storage.lake import read_only
from usage_pipeline.core.storage.schema import TABLES, ensure_schema, table_columns
from usage_pipeline.definitions import build_definitions
from usage_pipeline.defs.metadata import (
    COLUMN_SCHEMA,
    MAX_CELL,
    OWNERS,
    ROW_COUNT,
    column_schema,
    table,
    table_entries,
)
from usage_pipeline.settings import lake_of, load_settings
from usage_pipeline_tests.conftest import now_s, put
from usage_pipeline_tests.defs.test_ingest_integration import evaluate_and_run, stripe_csv

DOMAINS = {"ingest", "catalog", "metering", "billing", "lake"}


def _described(conn: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, str, bool]]:
    return [(r[0], r[1], r[2] == "YES") for r in conn.execute(f'DESCRIBE "{name}"').fetchall()]


def test_table_infers_types_and_keeps_headers_without_rows():
    when = datetime(2026, 3, 1, 12, tzinfo=UTC)
    value = table(
        [
            {"file": "a.csv", "rows": 3, "share": 0.5, "ok": True, "at": when, "amount": Decimal("1.50")},
            {"file": "x" * 500, "rows": None, "share": 1, "ok": False, "at": None, "amount": None},
        ]
    )
    types = {c.name: c.type for c in value.schema.columns}
    assert types == {
        "file": "string",
        "rows": "int",
        "share": "float",
        "ok": "bool",
        "at": "string",
        "amount": "string",
    }
    first, second = (r.data for r in value.records)
    assert first == {
        "file": "a.csv",
        "rows": 3,
        "share": 0.5,
        "ok": True,
        "at": "2026-03-01T12:00:00+00:00",
        "amount": "1.50",
    }
    assert len(second["file"]) == MAX_CELL and second["file"].endswith("…")
    assert second["rows"] is None

    empty = table([], ["code", "events"])
    assert empty.records == [] and [c.name for c in empty.schema.columns] == ["code", "events"]

    entries = table_entries("samples", [(i, f"e{i}") for i in range(60)], ["row", "event"], limit=50)
    assert len(entries["samples"].records) == 50
    assert entries["samples_rows_not_shown"] == dg.MetadataValue.int(10)
    assert "few_rows_not_shown" not in table_entries("few", [(1,)], ["n"])


def test_column_schemas_follow_the_created_tables():
    with duckdb.connect() as conn:
        ensure_schema(conn)
        for name in TABLES:
            declared = [(c.name, c.type.replace(", ", ","), c.nullable) for c in table_columns(name)]
            assert declared == _described(conn, name), name
    code = next(c for c in column_schema("usage_exceptions").columns if c.name == "code")
    assert code.description is not None and "invalid_value" in code.description
    assert code.constraints.nullable is False


def test_every_asset_and_check_has_owners_tags_and_a_description():
    graph = build_definitions(load_settings({})).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        name = key.to_user_string()
        assert list(node.owners) == list(OWNERS), name
        assert node.tags.get("domain") in DOMAINS, name
        assert node.description and "\n" not in node.description, name
        if name == "lake_files":  # the lake's upkeep, not a table: no column schema
            continue
        schema = node.metadata[COLUMN_SCHEMA].value
        assert isinstance(schema, dg.TableSchema), name
        assert [c.name for c in schema.columns] == [c.name for c in table_columns(name)]
    assert len(graph.asset_check_keys) >= 8
    for check_key in graph.asset_check_keys:
        spec = graph.get_check_spec(check_key)
        assert spec.metadata["owners"] == dg.MetadataValue.text(", ".join(OWNERS)), check_key.name
        assert spec.metadata["domain"].value in DOMAINS, check_key.name
        assert spec.description and "\n" not in spec.description, check_key.name


def test_an_ingest_run_reports_row_counts_and_tables_with_schemas(instance, settings, s3, bucket):
    t = now_s() - 3600
    put(
        s3,
        bucket,
        "incoming/a.csv",
        stripe_csv([("e1", t, "api_call", "cus_1", "1"), ("e2", t * 1000, "api_call", "cus_1", "1")]),
    )
    put(s3, bucket, "incoming/notes.txt", "hello")

    _, runs = evaluate_and_run(instance, settings)

    assert len(runs) == 1 and runs[0].success
    with read_only(lake_of(settings)) as conn:
        counts = {
            name: conn.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
            for name in ("ingested_files", "usage_events", "rejected_events")
        }
        described = _described(conn, "ingested_files")
    assert counts == {"ingested_files": 2, "usage_events": 1, "rejected_events": 1}
    materialized = {
        m.asset_key.to_user_string(): m.metadata
        for m in runs[0].asset_materializations_for_node("ingest_usage_files")
    }
    for name, count in counts.items():
        assert materialized[name][ROW_COUNT].value == count, name
    files = materialized["ingested_files"]["files_of_this_run"]
    assert {r.data["file"]: r.data["status"] for r in files.records} == {
        "incoming/a.csv": "succeeded_with_errors",
        "incoming/notes.txt": "failed",
    }
    assert {c.name: c.type for c in files.schema.columns}["total"] == "int"

    node = build_definitions(settings).resolve_asset_graph().get(dg.AssetKey("ingested_files"))
    schema = node.metadata[COLUMN_SCHEMA].value
    assert isinstance(schema, dg.TableSchema)
    assert [c.name for c in schema.columns] == [name for name, _, _ in described]

    checks = {e.check_name: e for e in runs[0].get_asset_check_evaluations()}
    tables = {
        (check, key): value
        for check, evaluation in checks.items()
        for key, value in evaluation.metadata.items()
        if isinstance(value, dg.TableMetadataValue)
    }
    assert ("no_failed_files", "failing files (oldest first)") in tables
    assert ("no_rejected_rows", "sample of rejected rows") in tables
    for (check, key), value in tables.items():
        names = [c.name for c in value.schema.columns]
        assert names, (check, key)
        assert all(list(r.data) == names for r in value.records), (check, key)
    rejected = tables[("no_rejected_rows", "sample of rejected rows")]
    assert [r.data["error_code"] for r in rejected.records] == ["invalid_timestamp"]
