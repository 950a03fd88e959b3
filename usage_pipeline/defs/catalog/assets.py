"""The catalog assets: the validated YAML catalog published to DuckDB tables (one multi-asset)."""

import dagster as dg

from usage_pipeline.core.catalog.model import Catalog, CatalogError, load_catalog
from usage_pipeline.core.catalog.publish import CATALOG_COLUMNS, publish_catalog
from usage_pipeline.defs.metadata import row_counts, table_asset_spec
from usage_pipeline.defs.resources import PipelineSettings, UsageLake, infrastructure_failures

CATALOG_KEYS: tuple[dg.AssetKey, ...] = tuple(dg.AssetKey(name) for name in CATALOG_COLUMNS)

_DESCRIPTIONS = {
    "meters": "Meters of the catalog: what to aggregate, matched by event_name and/or property filters.",
    "prices": "Prices of the catalog: pricing model, currency and amounts (decimal).",
    "subscriptions": "Subscriptions of the catalog: customer, currency, billing period and anchor.",
    "subscription_prices": "Which prices each subscription holds.",
}


def load_catalog_or_fail(settings: PipelineSettings) -> Catalog:
    """The catalog of the run; a broken one fails the step with the message naming the entries."""
    path = settings.get().catalog_path
    try:
        return load_catalog(path)
    except CatalogError as exc:
        raise dg.Failure(description=str(exc), metadata={"catalog": path}) from exc


@dg.multi_asset(
    name="catalog",
    specs=[
        table_asset_spec(name, domain="catalog", kinds={"duckdb"}, description=description)
        for name, description in _DESCRIPTIONS.items()
    ],
    pool="period_close",
)
def catalog(context: dg.AssetExecutionContext, lake: UsageLake, settings: PipelineSettings):
    """Validate the catalog (USAGE_CATALOG_PATH) and replace the four catalog tables in one transaction.

    A broken catalog fails the run with the message naming every offending entry; nothing is published
    and nothing downstream (metering, billing) runs.
    """
    loaded = load_catalog_or_fail(settings)
    path = settings.get().catalog_path
    with infrastructure_failures(settings.get()), lake.get_connection() as conn:
        counts = publish_catalog(conn, loaded)
        tables = {name: row_counts(conn, name) for name in CATALOG_COLUMNS}
    context.log.info(f"published catalog {path}: {counts}")
    for name, table_counts in tables.items():
        yield dg.MaterializeResult(
            asset_key=name, metadata={**table_counts, "catalog": dg.MetadataValue.path(path)}
        )
