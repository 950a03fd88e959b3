"""Input coercion for catalog fields: decimal strings (never floats), UTC datetimes, currencies, filters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from babel.numbers import is_currency
from pydantic import AfterValidator, BeforeValidator, StringConstraints

from usage_pipeline.core.storage.values import to_utc

MAX_DECIMAL_PLACES = 12


def decimal_input(value: object) -> Decimal:
    # YAML floats are binary approximations: money must be written as a string (or an integer).
    if isinstance(value, bool):
        raise ValueError(f"expected a decimal string, got {value!r}")
    if isinstance(value, float):
        raise ValueError(f'{value!r} is a float; quote it as a decimal string, e.g. "{value!r}"')
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"expected a decimal string, got {type(value).__name__} {value!r}")
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite decimal number")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMAL_PLACES:
        raise ValueError(f"{value!r} has more than {MAX_DECIMAL_PLACES} decimal places")
    if number < 0:
        raise ValueError(f"{value!r} is negative")
    return number


def datetime_input(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected a date-time, got {value!r}")
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


def currency_code(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 4217 currency code, got {value!r}")
    code = value.strip().upper()
    if len(code) != 3 or not is_currency(code):
        raise ValueError(f"{value!r} is not a known ISO 4217 currency code")
    return code


def _filter_value(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)  # true -> "true", 5 -> "5": the text the property holds in JSON
    raise ValueError(f"filter values must be strings, numbers or booleans, got {value!r}")


def filters_input(value: object) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of property -> value or list of values")
    out: dict[str, tuple[str, ...]] = {}
    for key, raw in value.items():
        values = tuple(raw) if isinstance(raw, list | tuple) else (raw,)
        if not values:
            raise ValueError(f"property {key!r} has an empty list of values")
        out[str(key)] = tuple(_filter_value(v) for v in values)
    return out


Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
DecimalValue = Annotated[Decimal, BeforeValidator(decimal_input)]
Currency = Annotated[str, BeforeValidator(currency_code)]
UtcDatetime = Annotated[datetime, BeforeValidator(datetime_input), AfterValidator(to_utc)]
