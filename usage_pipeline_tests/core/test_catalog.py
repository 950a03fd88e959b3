"""The catalog loader: the bundled example, and every kind of broken catalog refused by name (SPEC 6)."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from usage_pipeline.core.catalog.model import Catalog, CatalogError, Meter, load_catalog
from usage_pipeline.settings import BUNDLED_CATALOG

BASE: dict[str, Any] = {
    "meters": [
        {"id": "api_calls", "event_name": "api_call", "aggregation": "count"},
        {"id": "storage_gb", "filters": {"feature": "storage"}, "aggregation": "max", "value_property": "gb"},
    ],
    "prices": [
        {"id": "base_usd", "currency": "USD", "model": "flat_fee", "amount": "49.00"},
        {
            "id": "api_calls_usd",
            "meter": "api_calls",
            "currency": "USD",
            "model": "per_unit",
            "unit_amount": "0.01",
        },
        {
            "id": "tokens_usd",
            "meter": "api_calls",
            "currency": "USD",
            "model": "tiered",
            "tiers": [{"up_to": 1000, "unit_amount": "0.002"}, {"up_to": None, "unit_amount": "0.001"}],
        },
    ],
    "subscriptions": [
        {
            "id": "sub_001",
            "customer_id": "cus_001",
            "currency": "USD",
            "price_ids": ["base_usd", "api_calls_usd"],
            "started_at": "2026-01-15T00:00:00Z",
            "billing_period_unit": "month",
        }
    ],
}


def write(tmp_path: Path, document: Any, name: str = "catalog.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def meter(catalog: Catalog, meter_id: str) -> Meter:
    (found,) = (m for m in catalog.meters if m.id == meter_id)
    return found


def refused(tmp_path: Path, document: Any) -> str:
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, document))
    return str(info.value)


def changed(**sections: Any) -> dict[str, Any]:
    document = copy.deepcopy(BASE)
    document.update(sections)
    return document


def test_bundled_catalog_loads_with_its_subscriptions_file() -> None:
    catalog = load_catalog(BUNDLED_CATALOG)
    assert {"api_calls", "tokens", "storage_gb", "seats"} <= {m.id for m in catalog.meters}
    sub = catalog.subscription_by_id["sub_001"]
    assert [p.id for p in catalog.prices_of(sub)] == ["base_usd", "api_calls_usd", "tokens_usd"]
    assert sub.started_at == datetime(2026, 1, 15, tzinfo=UTC) and sub.billing_anchor == sub.started_at
    daily = catalog.subscription_by_id["sub_daily_001"]
    assert daily.billing_period_unit == "day"
    assert {p.meter for p in catalog.prices_of(daily)} >= {"api_calls", "tokens"}
    assert any(p.model == "flat_fee" for p in catalog.prices_of(daily))
    chargebee = catalog.subscription_by_id["sub_daily_cb_001"]
    assert {p.meter for p in catalog.prices_of(chargebee)} == {"storage_gb", "seats"}
    assert meter(catalog, "storage_gb").filters == {"feature": ("storage",)}
    # Rows of example_subscriptions.csv join the inline ones.
    assert catalog.subscription_by_id["sub_003"].billing_period == 3
    assert catalog.subscription_by_id["sub_daily_004"].currency == "JPY"
    tokens = catalog.price_by_id["tokens_usd"]
    assert tokens.tiers is not None and tokens.tiers[0].unit_amount == Decimal("0.000002")


def test_a_valid_catalog_is_normalised(tmp_path: Path) -> None:
    document = changed()
    document["prices"][0]["currency"] = "usd"
    document["meters"][1]["filters"] = {"feature": ["storage", "disk"], "tier": 5, "beta": True}
    document["subscriptions"][0].update(
        started_at="2026-01-15T02:00:00+02:00", cancelled_at="2026-06-01 00:00"
    )
    document["subscriptions"][0]["currency"] = "usd"
    catalog = load_catalog(write(tmp_path, document))
    assert catalog.price_by_id["base_usd"].currency == "USD"
    assert meter(catalog, "storage_gb").filters == {
        "feature": ("storage", "disk"),
        "tier": ("5",),
        "beta": ("true",),
    }
    sub = catalog.subscriptions[0]
    assert sub.started_at == datetime(2026, 1, 15, 0, 0, tzinfo=UTC)  # offset converted to UTC
    assert sub.cancelled_at == datetime(2026, 6, 1, tzinfo=UTC)  # naive read as UTC
    assert catalog.price_by_id["base_usd"].amount == Decimal("49.00")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["prices"][2].update(model="graduated"),
            "prices[2] (id 'tokens_usd').model: 'graduated'",
        ),
        (
            lambda d: d["prices"][2]["tiers"].insert(1, {"up_to": 500}),
            "prices[2] (id 'tokens_usd').tiers: tier 2: up_to 500 must be greater than the previous tier's",
        ),
        (
            lambda d: d["prices"][2]["tiers"][1].update(up_to=5000),
            "prices[2] (id 'tokens_usd').tiers: the last tier must have up_to: null",
        ),
        (
            lambda d: d["prices"][2]["tiers"][0].update(up_to=None),
            "prices[2] (id 'tokens_usd').tiers: tier 1: only the last tier may have up_to: null",
        ),
        (
            lambda d: d["prices"][1].update(meter="api_callz"),
            "prices[1] (id 'api_calls_usd').meter: unknown meter",
        ),
        (
            lambda d: d["subscriptions"][0]["price_ids"].append("nope"),
            "subscriptions[0] (id 'sub_001').price_ids: unknown price 'nope'",
        ),
        (
            lambda d: d["subscriptions"][0].update(currency="EUR"),
            "subscriptions[0] (id 'sub_001').currency: EUR but price 'base_usd' is in USD",
        ),
        (lambda d: d["meters"].append(dict(d["meters"][0])), "meters[2] (id 'api_calls').id: duplicate id"),
        (lambda d: d["prices"].append(dict(d["prices"][0])), "prices[3] (id 'base_usd').id: duplicate id"),
        (
            lambda d: d["subscriptions"].append(copy.deepcopy(d["subscriptions"][0])),
            "subscriptions[1] (id 'sub_001').id: duplicate id",
        ),
        (lambda d: d["prices"][0].update(amount=49.5), 'quote it as a decimal string, e.g. "49.5"'),
        (lambda d: d["prices"][0].update(amount="-1"), "prices[0] (id 'base_usd').amount: '-1' is negative"),
        (
            lambda d: d["prices"][0].update(amount="0.0000000000001"),
            "amount: '0.0000000000001' has more than 12 decimal places",
        ),
        (lambda d: d["prices"][0].update(amout="1"), "prices[0] (id 'base_usd').amout: unknown field"),
        (lambda d: d["prices"][2]["tiers"][0].update(upto=5), "tiers[0].upto: unknown field"),
        (lambda d: d.update(subscription=[]), "unknown top-level keys 'subscription'"),
        (lambda d: d["prices"][1].pop("unit_amount"), "prices[1] (id 'api_calls_usd').unit_amount: required"),
        (
            lambda d: d["prices"][1].pop("meter"),
            "prices[1] (id 'api_calls_usd').meter: a per_unit price needs",
        ),
        (
            lambda d: d["prices"][0].update(meter="api_calls"),
            "prices[0] (id 'base_usd').meter: a flat_fee price",
        ),
        (lambda d: d["prices"][1].update(tiers=[{"up_to": None}]), "tiers: not used by model per_unit"),
        (
            lambda d: d["prices"].append(
                {
                    "id": "seats",
                    "meter": "api_calls",
                    "currency": "USD",
                    "model": "stairstep",
                    "tiers": [{"up_to": None, "unit_amount": "1", "flat_amount": "9"}],
                }
            ),
            "prices[3] (id 'seats').tiers: tier 1: stairstep tiers use flat_amount only",
        ),
        (
            lambda d: d["prices"][1].update(
                model="package", unit_amount=None, package_size=0, package_amount="1"
            ),
            "prices[1] (id 'api_calls_usd').package_size: must be greater than 0",
        ),
        (lambda d: d["prices"][0].update(currency="XYZ"), "currency: 'XYZ' is not a known ISO 4217"),
        (lambda d: d["meters"][0].pop("event_name"), "meters[0] (id 'api_calls').event_name: a meter needs"),
        (lambda d: d["meters"][0].update(aggregation="avg"), "meters[0] (id 'api_calls').aggregation: 'avg'"),
        (
            lambda d: d["subscriptions"][0].update(cancelled_at="2026-01-01T00:00:00Z"),
            "subscriptions[0] (id 'sub_001').cancelled_at: must be after started_at",
        ),
        (lambda d: d["subscriptions"][0].update(billing_period=0), "billing_period: Input should be greater"),
        (
            lambda d: d["subscriptions"][0].update(billing_period_unit="quarter"),
            "billing_period_unit: 'quarter'",
        ),
    ],
)
def test_broken_catalogs_are_refused_naming_the_entry(tmp_path: Path, mutate: Any, expected: str) -> None:
    document = changed()
    mutate(document)
    assert expected in refused(tmp_path, document)


def test_every_problem_is_listed_one_per_line(tmp_path: Path) -> None:
    document = changed()
    document["prices"][0]["amount"] = 1.5
    document["prices"][1]["meter"] = "ghost"
    document["subscriptions"][0]["price_ids"].append("nope")
    message = refused(tmp_path, document)
    lines = message.splitlines()
    assert "3 problems" in lines[0] and str(tmp_path / "catalog.yaml") in lines[0]
    assert len(lines) == 4
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "catalog.yaml")
    assert str(pickle.loads(pickle.dumps(info.value))) == message  # survives a run-worker boundary
    # A subscription naming a price that itself failed validation is not reported a second time.
    document = changed()
    document["prices"][1]["unit_amount"] = 0.01
    assert "unknown price" not in refused(tmp_path, document)


def test_unreadable_or_malformed_files_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(CatalogError, match=r"missing\.yaml"):
        load_catalog(missing)
    assert "not valid YAML" in refused(tmp_path, "meters: [unclosed\n")
    assert "expected a mapping" in refused(tmp_path, "- just a list\n")


def test_catalog_constructed_in_code_runs_the_cross_checks() -> None:
    meter = Meter(id="m", event_name="e", aggregation="count")
    with pytest.raises(CatalogError, match=r"meters\[1\] \(id 'm'\)\.id: duplicate id"):
        Catalog(meters=(meter, meter))


def test_subscriptions_csv_file(tmp_path: Path) -> None:
    (tmp_path / "subs.csv").write_text(
        "id,customer_id,currency,price_ids,started_at,cancelled_at,billing_period_unit,billing_period,billing_anchor\n"
        "sub_csv_1,cus_9,USD,base_usd; api_calls_usd,2026-02-01T00:00:00Z,,week,2,\n"
        "sub_csv_2,cus_9,USD,base_usd,2026-02-01,2026-09-01T00:00:00Z,month,,2026-02-15T12:00:00Z\n"
    )
    catalog = load_catalog(write(tmp_path, changed(subscriptions_file="subs.csv")))
    first, second = catalog.subscription_by_id["sub_csv_1"], catalog.subscription_by_id["sub_csv_2"]
    assert first.price_ids == ("base_usd", "api_calls_usd")
    assert (first.billing_period, first.cancelled_at, first.billing_anchor) == (2, None, first.started_at)
    assert second.billing_period == 1
    assert second.billing_anchor == datetime(2026, 2, 15, 12, tzinfo=UTC)
    # Both are cus_9's, and in the order metering routes its events by (SPEC 7): earliest started_at,
    # then smallest id.
    of_cus_9 = [s for s in catalog.subscriptions if s.customer_id == "cus_9"]
    assert sorted(of_cus_9, key=lambda s: (s.started_at, s.id)) == [first, second]


def test_subscriptions_csv_errors_name_the_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "subs.csv").write_text(
        "id,customer_id,currency,price_ids,started_at,billing_period_unit\n"
        "sub_ok,cus_1,USD,base_usd,2026-02-01T00:00:00Z,month\n"
        "sub_bad,cus_2,USD,base_usd;ghost,2026-02-01T00:00:00Z,fortnight\n"
        "sub_001,cus_3,USD,base_usd,2026-02-01T00:00:00Z,month\n"
    )
    message = refused(tmp_path, changed(subscriptions_file="subs.csv"))
    assert "subs.csv row 2 (id 'sub_bad').billing_period_unit: 'fortnight'" in message
    assert "subs.csv row 3 (id 'sub_001').id: duplicate id, also subscriptions[0] (id 'sub_001')" in message
    (tmp_path / "subs.csv").write_text("id,customer,currency\n")
    assert "unknown columns 'customer'" in refused(tmp_path, changed(subscriptions_file="subs.csv"))
    assert "subscriptions_file" in refused(tmp_path, changed(subscriptions_file="absent.csv"))


def test_subscriptions_parquet_file(tmp_path: Path) -> None:
    pl.DataFrame(
        {
            "id": ["sub_pq_1", "sub_pq_2"],
            "customer_id": ["cus_7", "cus_8"],
            "currency": ["USD", "USD"],
            "price_ids": [["base_usd"], ["base_usd", "api_calls_usd"]],
            "started_at": [datetime(2026, 3, 1), datetime(2026, 3, 2, 6)],
            "cancelled_at": [None, datetime(2026, 5, 1)],
            "billing_period_unit": ["day", "year"],
            "billing_period": [None, 1],
        }
    ).write_parquet(tmp_path / "subs.parquet")
    catalog = load_catalog(write(tmp_path, changed(subscriptions=[], subscriptions_file="subs.parquet")))
    assert [s.id for s in catalog.subscriptions] == ["sub_pq_1", "sub_pq_2"]
    second = catalog.subscription_by_id["sub_pq_2"]
    assert second.price_ids == ("base_usd", "api_calls_usd")
    assert second.started_at == datetime(2026, 3, 2, 6, tzinfo=UTC)
    assert second.cancelled_at == datetime(2026, 5, 1, tzinfo=UTC)
    assert catalog.subscription_by_id["sub_pq_1"].billing_period == 1

    pl.DataFrame(
        {"id": ["sub_pq_3"], "customer_id": ["cus_1"], "currency": ["EUR"], "price_ids": ["base_usd"]}
    ).write_parquet(tmp_path / "bad.parquet")
    message = refused(tmp_path, changed(subscriptions_file="bad.parquet"))
    assert "bad.parquet row 1 (id 'sub_pq_3').started_at: required" in message
