"""Turning plain results into Dagster UI metadata: tables with schemas, table assets, check results."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time

import dagster as dg
import duckdb

from usage_pipeline.core.storage import schema

OWNERS = ("team:billing-data",)
MAX_CELL = 200
# Dagster's standard table keys (its TableMetadataSet is not exported by `dagster` 1.13).
COLUMN_SCHEMA = "dagster/column_schema"
ROW_COUNT = "dagster/row_count"
PARTITION_ROW_COUNT = "dagster/partition_row_count"

Row = Mapping[str, object] | Sequence[object]
Cell = str | int | float | bool | None


def _cell(value: object) -> Cell:
    """A value a TableRecord can hold: numbers and booleans as they are, everything else as (cut) text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value.isoformat() if isinstance(value, datetime | date | time) else str(value)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _column_type(values: Iterable[Cell]) -> str:
    types = {dg.TableMetadataValue.infer_column_type(v) for v in values if v is not None}
    if types == {"int", "float"}:
        return "float"
    return types.pop() if len(types) == 1 else "string"


def _table(rows: Sequence[Row], columns: Sequence[str] | None, limit: int) -> dg.TableMetadataValue:
    if columns is None:
        first = rows[0] if rows else {}
        if not isinstance(first, Mapping):
            raise ValueError("rows that are not mappings need their column names")
        columns = list(first)
    cells = [
        [_cell(row.get(c) if isinstance(row, Mapping) else row[i]) for i, c in enumerate(columns)]
        for row in rows[:limit]
    ]
    types = [_column_type(row[i] for row in cells) for i in range(len(columns))]
    records = [
        dg.TableRecord(
            {
                c: str(v) if t == "string" and v is not None and not isinstance(v, str) else v
                for c, t, v in zip(columns, types, row, strict=True)
            }
        )
        for row in cells
    ]
    columns_schema = [dg.TableColumn(name=c, type=t) for c, t in zip(columns, types, strict=True)]
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=columns_schema))


def table(
    rows: Iterable[Row], columns: Sequence[str] | None = None, limit: int = 50
) -> dg.TableMetadataValue:
    """Rows (mappings, or sequences in the order of `columns`) as a UI table with a typed schema: at most
    `limit` rows, long text cut, dates as ISO text. With no rows it still has the columns' headers."""
    return _table(list(rows), columns, limit)


def table_entries(
    name: str, rows: Iterable[Row], columns: Sequence[str] | None = None, limit: int = 50
) -> dict[str, dg.MetadataValue]:
    """`name` -> the table, plus `<name>_rows_not_shown` when rows were left out of it."""
    all_rows = list(rows)
    entries: dict[str, dg.MetadataValue] = {name: _table(all_rows, columns, limit)}
    if len(all_rows) > limit:
        entries[f"{name}_rows_not_shown"] = dg.MetadataValue.int(len(all_rows) - limit)
    return entries


def column_schema(table_name: str) -> dg.TableSchema:
    """The schema of one of the pipeline's DuckDB tables, with the DDL's comments as descriptions."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description=c.description,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in schema.table_columns(table_name)
        ]
    )


def table_asset_spec(
    table_name: str,
    *,
    domain: str,
    description: str,
    kinds: set[str],
    deps: Iterable[dg.AssetKey] = (),
) -> dg.AssetSpec:
    """The spec of an asset that is one DuckDB table: its domain is its group and `domain` tag, the
    table's columns are its `dagster/column_schema`, so the UI shows them before any run."""
    return dg.AssetSpec(
        table_name,
        deps=list(deps),
        description=description,
        group_name=domain,
        kinds=kinds,
        owners=list(OWNERS),
        tags={"domain": domain},
        metadata={COLUMN_SCHEMA: dg.MetadataValue.table_schema(column_schema(table_name))},
    )


def check_spec_metadata(domain: str) -> dict[str, dg.MetadataValue]:
    """Owners and domain of a check: Dagster's check specs have no owners or tags, so they are metadata."""
    return {"owners": dg.MetadataValue.text(", ".join(OWNERS)), "domain": dg.MetadataValue.text(domain)}


def check_spec(name: str, *, asset: str, domain: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(name, asset=asset, description=description, metadata=check_spec_metadata(domain))


def row_counts(
    conn: duckdb.DuckDBPyConnection, table_name: str, close_date: date | None = None
) -> dict[str, int]:
    """`dagster/row_count` of the table after the step, and `dagster/partition_row_count` for a close date."""
    counts = {ROW_COUNT: schema.row_count(conn, table_name)}
    if close_date is not None:
        counts[PARTITION_ROW_COUNT] = schema.row_count(conn, table_name, close_date)
    return counts


def check_result(
    *,
    asset_key: str,
    check_name: str,
    passed: bool,
    severity: dg.AssetCheckSeverity,
    summary: str,
    counts: Mapping[str, int] | None = None,
    examples: Mapping[str, Sequence[Mapping[str, object]]] | None = None,
) -> dg.AssetCheckResult:
    metadata: dict[str, dg.MetadataValue] = {"summary": dg.MetadataValue.text(summary)}
    metadata.update({name: dg.MetadataValue.int(value) for name, value in (counts or {}).items()})
    for name, rows in (examples or {}).items():
        if rows:  # without a row the columns are unknown
            metadata.update(table_entries(name, rows))
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=passed,
        severity=severity,
        description=summary,
        metadata=metadata,
    )
