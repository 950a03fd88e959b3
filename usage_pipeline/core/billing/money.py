"""Money: each currency's minor unit (ISO 4217, via babel's CLDR data), half-up rounding to it, display."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal
from functools import lru_cache

from babel.numbers import get_currency_precision, is_currency

# Wide enough for any quantity (DECIMAL(38, 12)) times any 12-decimal unit price without rounding.
EXACT = Context(prec=80)


@lru_cache(maxsize=512)
def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit: USD 2, JPY 0, BHD 3."""
    code = currency.upper()
    if not is_currency(code):
        # babel answers 2 for any unknown code; a typo must not silently bill in cents.
        raise ValueError(f"unknown currency {currency!r}")
    return get_currency_precision(code)


@lru_cache(maxsize=512)
def _quantum(currency: str) -> Decimal:
    return Decimal(1).scaleb(-minor_units(currency))


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round half-up (away from zero on an exact half) to the currency's minor unit."""
    return amount.quantize(_quantum(currency), rounding=ROUND_HALF_UP, context=EXACT)


def format_money(amount: Decimal | int | str, currency: str) -> str:
    """An amount as a person reads it: rounded half-up to the currency's minor unit, thousands grouped,
    then the code (`1.40 EUR`, `200 JPY`, `1,234.568 BHD`). Every amount shown (UI, CLI) goes through it."""
    rounded = round_money(Decimal(amount), currency)
    if rounded.is_zero():
        rounded = abs(rounded)  # no "-0.00" for a tiny negative amount
    return f"{rounded:,f} {currency.upper()}"
