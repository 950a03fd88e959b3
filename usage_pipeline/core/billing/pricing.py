"""Pricing models: a price and a metered quantity -> an exact amount and its breakdown (SPEC 6)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from usage_pipeline.core.billing.money import EXACT, round_money
from usage_pipeline.core.catalog.model import Price, Tier

_ZERO = Decimal(0)


@dataclass(frozen=True)
class Rating:
    """A priced line: `amount` rounded half-up to the minor unit, `unrounded` exact, and how it was built.

    `breakdown` is JSON-serialisable (every number a plain decimal string); it may be shared between equal
    ratings (memoised), so treat it as read-only.
    """

    amount: Decimal
    unrounded: Decimal
    breakdown: tuple[dict[str, str], ...]


def _text(value: Decimal) -> str:
    # Plain notation without trailing zeros: 10.000000000000 -> "10", 1E+3 -> "1000".
    return format(EXACT.normalize(value), "f") if value else "0"


@dataclass(frozen=True, slots=True)
class _TierPlan:
    """A tier with its lower bound and the breakdown texts that do not depend on the quantity."""

    number: str
    lower: Decimal
    up_to: Decimal | None
    unit_amount: Decimal
    flat_amount: Decimal
    texts: tuple[str, str, str, str]  # from, up_to, unit_amount, flat_amount


@lru_cache(maxsize=1024)
def _plans(tiers: tuple[Tier, ...]) -> tuple[_TierPlan, ...]:
    plans: list[_TierPlan] = []
    lower = _ZERO
    for number, tier in enumerate(tiers, start=1):
        up_to_text = "inf" if tier.up_to is None else _text(tier.up_to)
        texts = (_text(lower), up_to_text, _text(tier.unit_amount), _text(tier.flat_amount))
        plans.append(_TierPlan(str(number), lower, tier.up_to, tier.unit_amount, tier.flat_amount, texts))
        if tier.up_to is not None:
            lower = tier.up_to
    return tuple(plans)


def _tier_entry(plan: _TierPlan, units: Decimal, amount: Decimal) -> dict[str, str]:
    lower, up_to, unit_amount, flat_amount = plan.texts
    return {
        "tier": plan.number,
        "from": lower,
        "up_to": up_to,
        "units": _text(units),
        "unit_amount": unit_amount,
        "flat_amount": flat_amount,
        "amount": _text(amount),
    }


def _graduated(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    # Tier k covers (up_to[k-1], up_to[k]]; the first is always reached, tier k>1 once quantity exceeds
    # the previous up_to. Each reached tier prices the units inside it and adds its flat amount.
    total = _ZERO
    parts: list[dict[str, str]] = []
    for plan in _plans(price.tiers or ()):
        lower = plan.lower
        if plan.number != "1" and quantity <= lower:
            break
        top = quantity if plan.up_to is None or quantity < plan.up_to else plan.up_to
        units = EXACT.subtract(top, lower) if top > lower else _ZERO
        amount = EXACT.add(EXACT.multiply(units, plan.unit_amount), plan.flat_amount)
        total = EXACT.add(total, amount)
        parts.append(_tier_entry(plan, units, amount))
    return total, parts


def _tier_of_total(price: Price, quantity: Decimal) -> _TierPlan:
    """The tier the total falls in: the first whose up_to is at least the quantity."""
    for plan in _plans(price.tiers or ()):
        if plan.up_to is None or quantity <= plan.up_to:
            return plan
    raise AssertionError(f"price {price.id!r}: no tier with up_to null")  # the catalog forbids this


def _volume(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    plan = _tier_of_total(price, quantity)
    amount = EXACT.add(EXACT.multiply(quantity, plan.unit_amount), plan.flat_amount)
    return amount, [_tier_entry(plan, quantity, amount)]


def _stairstep(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    plan = _tier_of_total(price, quantity)
    return plan.flat_amount, [_tier_entry(plan, quantity, plan.flat_amount)]


def _package(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    size, each = price.package_size, price.package_amount
    assert size is not None and each is not None  # the catalog requires both for a package price
    # Integer division and remainder are exact, unlike ceil(quantity / size) on a rounded quotient.
    packages = EXACT.divide_int(quantity, size)
    if EXACT.remainder(quantity, size):
        packages += 1
    amount = EXACT.multiply(packages, each)
    entry = {
        "packages": _text(packages),
        "package_size": _text(size),
        "package_amount": _text(each),
        "amount": _text(amount),
    }
    return amount, [entry]


def _per_unit(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    unit = price.unit_amount
    assert unit is not None  # the catalog requires unit_amount for a per_unit price
    amount = EXACT.multiply(quantity, unit)
    return amount, [{"units": _text(quantity), "unit_amount": _text(unit), "amount": _text(amount)}]


def _flat_fee(price: Price, quantity: Decimal) -> tuple[Decimal, list[dict[str, str]]]:
    amount = price.amount
    assert amount is not None  # the catalog requires amount for a flat_fee price
    return amount, [{"amount": _text(amount)}]


_MODELS: dict[str, Callable[[Price, Decimal], tuple[Decimal, list[dict[str, str]]]]] = {
    "tiered": _graduated,
    "volume": _volume,
    "stairstep": _stairstep,
    "package": _package,
    "per_unit": _per_unit,
    "flat_fee": _flat_fee,
}


# Small on purpose: the hits that matter are repeated quantities of one price (flat fees, small counts); a
# large memo of breakdown dicts would cost more in garbage-collector scans than it saves.
@lru_cache(maxsize=4096)
def _rate(price: Price, quantity: Decimal) -> Rating:
    unrounded, breakdown = _MODELS[price.model](price, quantity)
    return Rating(round_money(unrounded, price.currency), unrounded, tuple(breakdown))


def rate(price: Price, quantity: Decimal | int | None) -> Rating:
    """Price `quantity` with exact decimals; only the line total is rounded.

    A flat fee ignores the quantity (None is accepted for it); every other model needs a finite,
    non-negative Decimal or int.
    """
    if price.model == "flat_fee" and quantity is None:
        return _rate(price, _ZERO)
    if isinstance(quantity, bool) or not isinstance(quantity, Decimal | int):
        raise TypeError(f"price {price.id!r}: quantity must be a Decimal or an int, got {quantity!r}")
    if isinstance(quantity, int):
        quantity = Decimal(quantity)
    if not quantity.is_finite() or quantity < 0:
        raise ValueError(
            f"price {price.id!r}: quantity must be a finite, non-negative number, got {quantity}"
        )
    # A flat fee's rating does not depend on the quantity: one memo entry serves every period.
    return _rate(price, _ZERO if price.model == "flat_fee" else quantity)
