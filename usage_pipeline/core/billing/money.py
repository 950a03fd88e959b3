"""Money: each currency's minor unit (ISO 4217, via babel's CLDR data) and half-up rounding to it."""

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
