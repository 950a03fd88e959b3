"""Publishing the validated catalog to DuckDB (meters, prices, subscriptions, subscription_prices)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import duckdb
import pyarrow as pa

from usage_pipeline.core.catalog.model import Catalog, Price
from usage_pipeline.core.storage.lake import registered, transact
from usage_pipeline.core.storage.values import QUANTITY_TYPE, TIMESTAMP_TYPE

# table -> its columns, in the order of storage.schema (the names are the contract).
CATALOG_COLUMNS: dict[str, tuple[str, ...]] = {
    "meters": ("meter_id", "event_name", "filters", "aggregation", "value_property"),
    "prices": (
        "price_id",
        "meter_id",
        "currency",
        "pricing_model",
        "amount",
        "unit_amount",
        "package_size",
        "package_amount",
        "tiers",
    ),
    "subscriptions": (
        "subscription_id",
        "customer_id",
        "currency",
        "started_at",
        "cancelled_at",
        "billing_period_unit",
        "billing_period",
        "billing_anchor",
    ),
    "subscription_prices": ("subscription_id", "price_id"),
}


def _timestamps(values: list[datetime | None]) -> pa.Array:
    # Arrow converts aware datetimes to UTC in C, much faster than a Python conversion per value.
    return pa.array(values, type=pa.timestamp("us", tz="UTC")).cast(TIMESTAMP_TYPE)


def _decimals(values: list[Decimal | None]) -> pa.Array:
    return pa.array(values, type=QUANTITY_TYPE)


def _tiers_json(price: Price) -> str | None:
    if price.tiers is None:
        return None
    return json.dumps(
        [
            {
                "up_to": None if t.up_to is None else str(t.up_to),
                "unit_amount": str(t.unit_amount),
                "flat_amount": str(t.flat_amount),
            }
            for t in price.tiers
        ]
    )


# The last catalog's tables: one close meters and rates the same catalog object, and building the
# subscription rows is the costly part with a large catalog.
_last_tables: list[tuple[Catalog, dict[str, pa.Table]]] = []


def catalog_tables(catalog: Catalog) -> dict[str, pa.Table]:
    """The catalog as Arrow tables with the columns of the published DuckDB tables (cached for the last
    catalog object: the catalog is immutable)."""
    if _last_tables and _last_tables[0][0] is catalog:
        return _last_tables[0][1]
    tables = _build_tables(catalog)
    _last_tables[:] = [(catalog, tables)]
    return tables


def catalog_relations(catalog: Catalog) -> dict[str, pa.Table]:
    """The catalog tables under the names the metering and billing SQL read: cat_<table>."""
    return {f"cat_{name}": table for name, table in catalog_tables(catalog).items()}


def _build_tables(catalog: Catalog) -> dict[str, pa.Table]:
    meters = catalog.meters
    prices = catalog.prices
    subs = catalog.subscriptions
    return {
        "meters": pa.table(
            {
                "meter_id": [m.id for m in meters],
                "event_name": pa.array([m.event_name for m in meters], type=pa.string()),
                "filters": [json.dumps({k: list(v) for k, v in m.filters.items()}) for m in meters],
                "aggregation": [m.aggregation for m in meters],
                "value_property": [m.value_property for m in meters],
            }
        ),
        "prices": pa.table(
            {
                "price_id": [p.id for p in prices],
                "meter_id": pa.array([p.meter for p in prices], type=pa.string()),
                "currency": [p.currency for p in prices],
                "pricing_model": [p.model for p in prices],
                "amount": _decimals([p.amount for p in prices]),
                "unit_amount": _decimals([p.unit_amount for p in prices]),
                "package_size": _decimals([p.package_size for p in prices]),
                "package_amount": _decimals([p.package_amount for p in prices]),
                "tiers": pa.array([_tiers_json(p) for p in prices], type=pa.string()),
            }
        ),
        "subscriptions": pa.table(
            {
                "subscription_id": [s.id for s in subs],
                "customer_id": [s.customer_id for s in subs],
                "currency": [s.currency for s in subs],
                "started_at": _timestamps([s.started_at for s in subs]),
                "cancelled_at": _timestamps([s.cancelled_at for s in subs]),
                "billing_period_unit": [s.billing_period_unit for s in subs],
                "billing_period": pa.array([s.billing_period for s in subs], type=pa.int32()),
                "billing_anchor": _timestamps([s.billing_anchor for s in subs]),
            }
        ),
        "subscription_prices": pa.table(
            {
                "subscription_id": [s.id for s in subs for _ in s.price_ids],
                "price_id": [p for s in subs for p in s.price_ids],
            }
        ),
    }


def publish_catalog(conn: duckdb.DuckDBPyConnection, catalog: Catalog) -> dict[str, int]:
    """Replace the four catalog tables with `catalog` in one transaction; returns rows per table."""
    tables = catalog_tables(catalog)
    staged = {f"staged_{name}": table for name, table in tables.items()}

    def replace() -> None:
        for name in tables:
            columns = ", ".join(CATALOG_COLUMNS[name])
            conn.execute(f"DELETE FROM {name}")
            conn.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM staged_{name}")

    with registered(conn, staged):
        transact(conn, replace, what="publishing the catalog")
    return {name: table.num_rows for name, table in tables.items()}
