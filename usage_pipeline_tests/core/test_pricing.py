"""Pricing models and money rounding: the SPEC 6 examples, edge cases and properties."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from usage_pipeline.core.billing.money import format_money, minor_units, round_money
from usage_pipeline.core.billing.pricing import rate
from usage_pipeline.core.catalog.model import Price

D = Decimal


def tiers_price(model: str, tiers: list[tuple[object, str, str]], currency: str = "USD") -> Price:
    return Price(
        id=f"{model}_price",
        meter="m",
        currency=currency,
        model=model,
        tiers=[{"up_to": up, "unit_amount": unit, "flat_amount": flat} for up, unit, flat in tiers],
    )


# SPEC 6 examples.
GRADUATED = tiers_price("tiered", [(10, "10", "2"), (20, "5", "3"), (None, "5", "3")])
VOLUME = tiers_price("volume", [(100, "2", "10"), (200, "1", "0"), (None, "0.5", "50")])
STAIRSTEP = tiers_price("stairstep", [(5, "0", "25"), (20, "0", "90"), (None, "0", "300")])
PACKAGE = Price(id="pkg", meter="m", currency="USD", model="package", package_size=10, package_amount="100")
PER_UNIT = Price(id="pu", meter="m", currency="USD", model="per_unit", unit_amount="0.0015")
FLAT = Price(id="flat", currency="USD", model="flat_fee", amount="49.00")


@pytest.mark.parametrize(("quantity", "expected"), [("0", "2"), ("10", "102"), ("11", "110"), ("21", "163")])
def test_graduated_spec_examples(quantity: str, expected: str) -> None:
    assert rate(GRADUATED, D(quantity)).amount == D(expected)


@pytest.mark.parametrize(
    ("quantity", "expected"), [("0", "10"), ("100", "210"), ("100.5", "100.5"), ("300", "200")]
)
def test_volume_spec_examples(quantity: str, expected: str) -> None:
    assert rate(VOLUME, D(quantity)).amount == D(expected)


def test_package_spec_example_rounds_packages_up() -> None:
    rating = rate(PACKAGE, D(121))
    assert rating.amount == D(1300)
    assert rating.breakdown == (
        {"packages": "13", "package_size": "10", "package_amount": "100", "amount": "1300"},
    )
    assert rate(PACKAGE, D(120)).amount == D(1200)  # exactly 12 packages
    assert rate(PACKAGE, D("0.001")).amount == D(100)  # any usage starts a package
    assert rate(PACKAGE, D(0)).amount == D(0)


@pytest.mark.parametrize(
    ("quantity", "expected"), [("0", "25"), ("5", "25"), ("5.01", "90"), ("20", "90"), ("21", "300")]
)
def test_stairstep_is_the_flat_amount_of_the_tier_of_the_total(quantity: str, expected: str) -> None:
    assert rate(STAIRSTEP, D(quantity)).amount == D(expected)


def test_per_unit_and_flat_fee() -> None:
    assert rate(PER_UNIT, D(1001)).amount == D("1.50")  # 1.5015 rounds half-up to cents
    assert rate(PER_UNIT, D(1001)).unrounded == D("1.5015")
    assert rate(FLAT, D(0)).amount == D("49.00")
    assert rate(FLAT, D(12345)).amount == D("49.00")  # a flat fee ignores the quantity
    assert rate(FLAT, None).amount == D("49.00")


def test_graduated_breakdown_names_each_reached_tier() -> None:
    rating = rate(GRADUATED, D("21"))
    assert [t["tier"] for t in rating.breakdown] == ["1", "2", "3"]
    assert rating.breakdown[2] == {
        "tier": "3",
        "from": "20",
        "up_to": "inf",
        "units": "1",
        "unit_amount": "5",
        "flat_amount": "3",
        "amount": "8",
    }
    json.dumps(rating.breakdown)  # stored as the line item's JSON breakdown


def test_exactly_on_a_boundary_stays_in_the_lower_tier() -> None:
    # Tier k covers (up_to[k-1], up_to[k]]: 10 is in tier 1, the next tier starts just above it.
    assert len(rate(GRADUATED, D(10)).breakdown) == 1
    assert [t["tier"] for t in rate(GRADUATED, D("10.000001")).breakdown] == ["1", "2"]
    assert rate(VOLUME, D(200)).breakdown[0]["tier"] == "2"


def test_fractional_quantity_in_graduated_tiers() -> None:
    rating = rate(GRADUATED, D("10.5"))
    assert rating.unrounded == D("107.5")  # 100 + 2 + 0.5 * 5 + 3
    assert rating.breakdown[1]["units"] == "0.5"


def test_only_the_line_total_is_rounded_not_each_tier() -> None:
    # Two tiers of 0.004 each: rounding per tier would give 0.00 + 0.00, the line is 0.008 -> 0.01.
    price = tiers_price("tiered", [(1, "0.004", "0"), (None, "0.004", "0")])
    rating = rate(price, D(2))
    assert rating.unrounded == D("0.008")
    assert rating.amount == D("0.01")


def test_very_large_quantities_are_exact() -> None:
    huge = D(10) ** 18
    tokens = tiers_price("tiered", [(1000000, "0.000002", "0"), (None, "0.0000015", "5")])
    expected = D("2") + (huge - 1000000) * D("0.0000015") + 5
    assert rate(tokens, huge).unrounded == expected
    assert rate(tokens, huge).amount == D("1500000000005.50")  # 2 + 1.5e12 - 1.5 + 5
    odd = D("123456789012345678.123456789012")
    per_unit = Price(id="x", meter="m", currency="USD", model="per_unit", unit_amount="0.000000000001")
    assert rate(per_unit, odd).unrounded == D("123456.789012345678123456789012")


@pytest.mark.parametrize(
    ("currency", "unrounded", "expected"),
    [
        ("USD", "1.005", "1.01"),
        ("USD", "1.0049999", "1.00"),
        ("JPY", "2.5", "3"),
        ("JPY", "3.5", "4"),  # half-up, not banker's rounding
        ("JPY", "2.4999", "2"),
        ("BHD", "0.0005", "0.001"),
        ("BHD", "1.2344", "1.234"),
    ],
)
def test_round_money_half_up_to_the_minor_unit(currency: str, unrounded: str, expected: str) -> None:
    rounded = round_money(D(unrounded), currency)
    assert rounded == D(expected)
    assert rounded.as_tuple().exponent == -minor_units(currency)


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        ("200.0000", "JPY", "200 JPY"),
        ("2.5", "JPY", "3 JPY"),  # half-up, as the lines are rounded
        ("1.4000", "EUR", "1.40 EUR"),
        ("1.005", "USD", "1.01 USD"),
        ("0", "USD", "0.00 USD"),
        ("-0.004", "USD", "0.00 USD"),  # never "-0.00"
        ("-12.345", "usd", "-12.35 USD"),
        ("0.0035", "BHD", "0.004 BHD"),
        ("1234567.8915", "BHD", "1,234,567.892 BHD"),
        ("1E+3", "JPY", "1,000 JPY"),
    ],
)
def test_format_money_shows_the_currency_minor_unit(amount: str, currency: str, shown: str) -> None:
    assert format_money(D(amount), currency) == shown


def test_minor_units_from_iso_4217() -> None:
    assert (minor_units("USD"), minor_units("JPY"), minor_units("BHD"), minor_units("eur")) == (2, 0, 3, 2)
    with pytest.raises(ValueError, match="unknown currency"):
        minor_units("XYZ")


def test_rating_rounds_to_the_price_currency() -> None:
    jpy = Price(id="jpy", meter="m", currency="JPY", model="per_unit", unit_amount="0.25")
    assert rate(jpy, D(10)).amount == D(3)  # 2.5 yen -> 3
    bhd = Price(id="bhd", meter="m", currency="BHD", model="per_unit", unit_amount="0.0001")
    assert rate(bhd, D(15)).amount == D("0.002")  # 0.0015 -> 0.002
    assert str(rate(bhd, D(0)).amount) == "0.000"


def test_prices_with_the_same_id_but_other_terms_are_rated_apart() -> None:
    # Ratings are memoised; two catalogs may define the same price id differently.
    cheap = Price(id="same", meter="m", currency="USD", model="per_unit", unit_amount="1")
    dear = Price(id="same", meter="m", currency="USD", model="per_unit", unit_amount="2")
    assert (rate(cheap, D(3)).amount, rate(dear, D(3)).amount) == (D(3), D(6))


def test_invalid_quantities_are_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        rate(PER_UNIT, D(-1))
    with pytest.raises(ValueError):
        rate(PER_UNIT, D("NaN"))
    with pytest.raises(TypeError):
        rate(PER_UNIT, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        rate(PER_UNIT, None)
    assert rate(PER_UNIT, 1000).amount == D("1.50")  # ints are fine


# --- properties ------------------------------------------------------------------------------------

amounts = st.decimals(min_value=0, max_value=1000, places=4, allow_nan=False, allow_infinity=False)
quantities = st.decimals(min_value=0, max_value=10**7, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def tier_prices(draw: st.DrawFn, model: str) -> Price:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=10**6), min_size=0, max_size=4)))
    tiers = [
        (up, str(draw(amounts)) if model != "stairstep" else "0", str(draw(amounts)))
        for up in [*bounds, None]
    ]
    return tiers_price(model, tiers, currency=draw(st.sampled_from(["USD", "JPY", "BHD"])))


@st.composite
def any_price(draw: st.DrawFn) -> Price:
    model = draw(st.sampled_from(["tiered", "volume", "stairstep", "package", "per_unit"]))
    if model == "package":
        size = draw(st.decimals(min_value="0.5", max_value=5000, places=2))
        return Price(
            id="p", meter="m", currency="USD", model=model, package_size=size, package_amount=draw(amounts)
        )
    if model == "per_unit":
        return Price(id="u", meter="m", currency="EUR", model=model, unit_amount=draw(amounts))
    return draw(tier_prices(model))


@given(price=any_price(), quantity=quantities)
def test_breakdown_sums_to_unrounded_and_rounding_is_within_half_a_minor_unit(
    price: Price, quantity: Decimal
) -> None:
    rating = rate(price, quantity)
    assert sum(D(part["amount"]) for part in rating.breakdown) == rating.unrounded
    half = D(1).scaleb(-minor_units(price.currency)) / 2
    assert abs(rating.amount - rating.unrounded) <= half
    assert rating.amount.as_tuple().exponent == -minor_units(price.currency)


@st.composite
def rising_stairs(draw: st.DrawFn) -> Price:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=10**6), max_size=4)))
    flats = sorted(draw(st.lists(amounts, min_size=len(bounds) + 1, max_size=len(bounds) + 1)))
    return tiers_price(
        "stairstep", [(up, "0", str(flat)) for up, flat in zip([*bounds, None], flats, strict=True)]
    )


@given(
    price=st.one_of(
        tier_prices("tiered"),
        rising_stairs(),
        any_price().filter(lambda p: p.model in ("package", "per_unit")),
    ),
    a=quantities,
    b=quantities,
)
def test_amount_is_monotone_in_quantity(price: Price, a: Decimal, b: Decimal) -> None:
    # Holds for tiered, package and per_unit with non-negative amounts, and stairstep with rising steps.
    # Volume is not monotone: in the SPEC example 100 -> 210 but 100.5 -> 100.5.
    low, high = sorted((a, b))
    assert rate(price, low).unrounded <= rate(price, high).unrounded


@given(price=tier_prices("tiered"), quantity=quantities)
def test_graduated_tier_units_add_up_to_the_quantity(price: Price, quantity: Decimal) -> None:
    breakdown = rate(price, quantity).breakdown
    assert sum(D(part["units"]) for part in breakdown) == quantity
    # Every reached tier but the last is full.
    for part in breakdown[:-1]:
        assert D(part["units"]) == D(part["up_to"]) - D(part["from"])


@given(price=tier_prices("volume"), quantity=quantities)
def test_volume_prices_all_units_at_one_tier(price: Price, quantity: Decimal) -> None:
    (part,) = rate(price, quantity).breakdown
    assert D(part["units"]) == quantity
    assert D(part["from"]) <= quantity or part["tier"] == "1"
    assert part["up_to"] == "inf" or quantity <= D(part["up_to"])


@given(
    size=st.decimals(min_value="0.001", max_value=10**6, places=3),
    each=amounts,
    quantity=quantities,
)
def test_package_amount_is_a_whole_number_of_packages(
    size: Decimal, each: Decimal, quantity: Decimal
) -> None:
    price = Price(id="p", meter="m", currency="USD", model="package", package_size=size, package_amount=each)
    rating = rate(price, quantity)
    packages = D(rating.breakdown[0]["packages"])
    assert packages == packages.to_integral_value()
    assert rating.unrounded == packages * each
    assert (packages - 1) * size < quantity <= packages * size or (quantity == 0 and packages == 0)
