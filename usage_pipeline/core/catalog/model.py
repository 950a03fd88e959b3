"""The catalog (meters, prices, subscriptions): typed, validated models and the YAML loader (SPEC 6)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from usage_pipeline.core.catalog.fields import Currency, DecimalValue, Id, UtcDatetime, filters_input

Aggregation = Literal["count", "sum", "max", "min", "latest", "unique_count"]
PricingModel = Literal["flat_fee", "per_unit", "tiered", "volume", "stairstep", "package"]
PeriodUnit = Literal["day", "week", "month", "year"]

TIER_MODELS = frozenset({"tiered", "volume", "stairstep"})
# The fields each pricing model uses; any other model field given on a price is refused as a likely mistake.
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "flat_fee": ("amount",),
    "per_unit": ("unit_amount",),
    "tiered": ("tiers",),
    "volume": ("tiers",),
    "stairstep": ("tiers",),
    "package": ("package_size", "package_amount"),
}
_ALL_MODEL_FIELDS = ("amount", "unit_amount", "tiers", "package_size", "package_amount")
TOP_LEVEL_KEYS = ("meters", "prices", "subscriptions", "subscriptions_file")


class CatalogError(ValueError):
    """The catalog breaks a rule; the message names every offending entry and field, one per line."""

    def __init__(self, problems: Iterable[str], source: str | Path | None = None) -> None:
        self.problems = tuple(problems)
        self.source = str(source) if source is not None else None
        where = f"catalog {self.source}" if self.source else "catalog"
        count = len(self.problems)
        header = f"{where} is invalid ({count} problem{'s' if count != 1 else ''}):"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))

    def __reduce__(self) -> tuple[type[CatalogError], tuple[tuple[str, ...], str | None]]:
        # Rebuild from the problems, not the message, when the error crosses a process boundary.
        return (type(self), (self.problems, self.source))


class _FieldProblems(ValueError):
    """Several (field, message) problems found by one model validator, reported one per line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


_STRICT = ConfigDict(frozen=True, extra="forbid")


# --- entries ---------------------------------------------------------------------------------------


class Meter(BaseModel):
    """What to aggregate: Stripe events by `event_name` and/or Chargebee events by property `filters`."""

    model_config = _STRICT

    id: Id
    event_name: Id | None = None
    filters: Annotated[dict[str, tuple[str, ...]], BeforeValidator(filters_input)] = Field(
        default_factory=dict
    )
    aggregation: Aggregation
    value_property: Id = "value"

    @model_validator(mode="after")
    def _needs_a_match(self) -> Meter:
        if self.event_name is None and not self.filters:
            raise _FieldProblems([("event_name", "a meter needs event_name and/or filters")])
        return self


class Tier(BaseModel):
    """One tier: quantities in (previous up_to, up_to]; `up_to` None is infinity (last tier only)."""

    model_config = _STRICT

    up_to: DecimalValue | None
    unit_amount: DecimalValue = Decimal(0)
    flat_amount: DecimalValue = Decimal(0)


class Price(BaseModel):
    """How a meter's quantity (or nothing, for a flat fee) becomes money in one currency."""

    model_config = _STRICT

    id: Id
    meter: Id | None = None
    currency: Currency
    model: PricingModel
    amount: DecimalValue | None = None
    unit_amount: DecimalValue | None = None
    tiers: tuple[Tier, ...] | None = None
    package_size: DecimalValue | None = None
    package_amount: DecimalValue | None = None

    @model_validator(mode="after")
    def _model_fields(self) -> Price:
        problems: list[tuple[str, str]] = []
        if self.model == "flat_fee" and self.meter is not None:
            problems.append(("meter", "a flat_fee price has no meter"))
        if self.model != "flat_fee" and self.meter is None:
            problems.append(("meter", f"a {self.model} price needs a meter"))
        used = MODEL_FIELDS[self.model]
        for name in used:
            if getattr(self, name) is None:
                problems.append((name, f"required by model {self.model}"))
        for name in _ALL_MODEL_FIELDS:
            if name not in used and getattr(self, name) is not None:
                problems.append((name, f"not used by model {self.model} (it uses {', '.join(used)})"))
        if self.package_size is not None and self.package_size <= 0:
            problems.append(("package_size", "must be greater than 0"))
        if self.tiers is not None and self.model in TIER_MODELS:
            problems.extend(("tiers", msg) for msg in _tier_problems(self.tiers, self.model))
        if problems:
            raise _FieldProblems(problems)
        return self


def _tier_problems(tiers: tuple[Tier, ...], model: str) -> list[str]:
    if not tiers:
        return ["needs at least one tier"]
    problems: list[str] = []
    previous: Decimal | None = None
    for number, tier in enumerate(tiers, start=1):
        if tier.up_to is None:
            if number < len(tiers):
                problems.append(f"tier {number}: only the last tier may have up_to: null")
            continue
        if previous is not None and tier.up_to <= previous:
            problems.append(
                f"tier {number}: up_to {tier.up_to} must be greater than the previous tier's {previous}"
            )
        previous = tier.up_to
    if tiers[-1].up_to is not None:
        problems.append("the last tier must have up_to: null")
    if model == "stairstep":
        problems.extend(
            f"tier {index + 1}: stairstep tiers use flat_amount only, not unit_amount"
            for index, tier in enumerate(tiers)
            if tier.unit_amount != 0
        )
    return problems


class Subscription(BaseModel):
    """A customer's subscription to prices, billed in anniversary periods of the billing anchor."""

    model_config = _STRICT

    id: Id
    customer_id: Id
    currency: Currency
    price_ids: tuple[Id, ...] = Field(min_length=1)
    started_at: UtcDatetime
    cancelled_at: UtcDatetime | None = None
    billing_period_unit: PeriodUnit
    billing_period: int = Field(default=1, ge=1)
    billing_anchor: UtcDatetime

    @model_validator(mode="before")
    @classmethod
    def _anchor_defaults_to_start(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("billing_anchor") is None and "started_at" in data:
            return {**data, "billing_anchor": data["started_at"]}
        return data

    @field_validator("price_ids")
    @classmethod
    def _distinct_prices(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({p for p in value if value.count(p) > 1})
        if repeated:
            raise ValueError(f"price ids listed twice: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _cancel_after_start(self) -> Subscription:
        if self.cancelled_at is not None and self.cancelled_at <= self.started_at:
            raise _FieldProblems([("cancelled_at", "must be after started_at")])
        return self


class Catalog(BaseModel):
    """The whole catalog; construction runs the cross checks (unknown references, currencies, duplicates)."""

    model_config = ConfigDict(frozen=True)

    meters: tuple[Meter, ...] = ()
    prices: tuple[Price, ...] = ()
    subscriptions: tuple[Subscription, ...] = ()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        problems = cross_check(self.meters, self.prices, self.subscriptions)
        if problems:
            raise CatalogError(problems)

    @cached_property
    def price_by_id(self) -> dict[str, Price]:
        return {p.id: p for p in self.prices}

    @cached_property
    def subscription_by_id(self) -> dict[str, Subscription]:
        return {s.id: s for s in self.subscriptions}

    def prices_of(self, subscription: Subscription) -> tuple[Price, ...]:
        by_id = self.price_by_id
        return tuple(by_id[price_id] for price_id in subscription.price_ids)


def _label(section: str, index: int, entry: object) -> str:
    entry_id = entry.get("id") if isinstance(entry, Mapping) else getattr(entry, "id", None)
    return f"{section}[{index}]" + (f" (id {entry_id!r})" if entry_id is not None else "")


def cross_check(
    meters: Iterable[Meter],
    prices: Iterable[Price],
    subscriptions: Iterable[Subscription],
    labels: Mapping[str, list[str]] | None = None,
) -> list[str]:
    """Problems between entries; `labels` maps a section to each entry's label (file rows name the file)."""
    sections: dict[str, list[Any]] = {
        "meters": list(meters),
        "prices": list(prices),
        "subscriptions": list(subscriptions),
    }

    def label(section: str, index: int) -> str:
        if labels is not None and section in labels:
            return labels[section][index]
        return _label(section, index, sections[section][index])

    problems: list[str] = []
    for section, entries in sections.items():
        first: dict[str, int] = {}
        for index, entry in enumerate(entries):
            if entry.id in first:
                problems.append(
                    f"{label(section, index)}.id: duplicate id, also {label(section, first[entry.id])}"
                )
            else:
                first[entry.id] = index
    meter_ids = {m.id for m in sections["meters"]}
    price_by_id = {p.id: p for p in sections["prices"]}
    for index, price in enumerate(sections["prices"]):
        if price.meter is not None and price.meter not in meter_ids:
            problems.append(f"{label('prices', index)}.meter: unknown meter {price.meter!r}")
    for index, sub in enumerate(sections["subscriptions"]):
        for price_id in sub.price_ids:
            price = price_by_id.get(price_id)
            if price is None:
                problems.append(f"{label('subscriptions', index)}.price_ids: unknown price {price_id!r}")
            elif price.currency != sub.currency:
                problems.append(
                    f"{label('subscriptions', index)}.currency: {sub.currency} but price {price_id!r} "
                    f"is in {price.currency}"
                )
    return problems


# --- loading ---------------------------------------------------------------------------------------

_ENTRY_MODELS: dict[str, type[BaseModel]] = {"meters": Meter, "prices": Price, "subscriptions": Subscription}


def _loc_text(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _error_lines(label: str, model: type[BaseModel], exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _loc_text(loc)
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _FieldProblems):
            lines.extend(f"{label}.{where + '.' if where else ''}{f}: {m}" for f, m in cause.problems)
            continue
        if err["type"] == "extra_forbidden":
            owner = Tier if loc[:1] == ("tiers",) and len(loc) > 2 else model
            message = f"unknown field (allowed: {', '.join(owner.model_fields)})"
        elif err["type"] == "missing":
            message = "required"
        elif err["type"] == "literal_error":
            message = f"{err['input']!r} is not one of {err['ctx']['expected']}"
        else:
            message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{label}{'.' + where if where else ''}: {message}")
    return lines


def _validate_entries(
    section: str, rows: Iterable[tuple[str, object]]
) -> tuple[list[Any], list[str], list[str], set[str]]:
    """Validate raw entries: (valid models, their labels, problems, ids of entries that failed)."""
    model = _ENTRY_MODELS[section]
    valid: list[Any] = []
    labels: list[str] = []
    problems: list[str] = []
    broken: set[str] = set()
    for label, raw in rows:
        if not isinstance(raw, Mapping):
            problems.append(f"{label}: expected a mapping of fields, got {raw!r}")
            continue
        try:
            valid.append(model.model_validate(raw))
            labels.append(label)
        except ValidationError as exc:
            lines = _error_lines(label, model, exc)
            if section == "subscriptions" and raw.get("billing_anchor") is None:
                # The anchor defaulted to started_at: its problem is already reported under started_at.
                lines = [line for line in lines if not line.startswith(f"{label}.billing_anchor:")]
            problems.extend(lines)
            broken.add(str(raw.get("id")))
    return valid, labels, problems, broken


def _subscription_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV / Parquet subscriptions file, empty cells dropped so that defaults apply."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows: list[dict[str, Any]] = list(reader)
    elif suffix in (".parquet", ".pq"):
        import polars as pl  # only a Parquet subscriptions file needs it

        frame = pl.read_parquet(path)
        columns, rows = frame.columns, frame.to_dicts()
    else:
        raise ValueError(f"unsupported subscriptions_file extension {suffix!r} (use .csv or .parquet)")
    unknown = [c for c in columns if c not in Subscription.model_fields]
    if unknown:
        allowed = ", ".join(Subscription.model_fields)
        raise ValueError(f"unknown columns {', '.join(map(repr, unknown))} (allowed: {allowed})")
    cleaned: list[dict[str, Any]] = []
    for row in rows:
        values = {
            k: v for k, v in row.items() if v is not None and not (isinstance(v, str) and v.strip() == "")
        }
        if isinstance(values.get("price_ids"), str):
            values["price_ids"] = [p.strip() for p in values["price_ids"].split(";") if p.strip()]
        cleaned.append(values)
    return cleaned


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate a catalog YAML (and its subscriptions_file); CatalogError lists every problem."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError([f"cannot read the file: {exc}"], path) from exc
    except yaml.YAMLError as exc:
        raise CatalogError([f"not valid YAML: {exc}"], path) from exc
    if not isinstance(document, Mapping):
        raise CatalogError([f"expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)}"], path)

    problems: list[str] = []
    unknown = [str(k) for k in document if k not in TOP_LEVEL_KEYS]
    if unknown:
        problems.append(
            f"unknown top-level keys {', '.join(map(repr, unknown))} (allowed: {', '.join(TOP_LEVEL_KEYS)})"
        )
    valid: dict[str, list[Any]] = {}
    labels: dict[str, list[str]] = {}
    broken: set[str] = set()
    for section in _ENTRY_MODELS:
        entries = document.get(section) or []
        if not isinstance(entries, list):
            problems.append(f"{section}: expected a list of entries")
            entries = []
        rows = [(_label(section, i, raw), raw) for i, raw in enumerate(entries)]
        valid[section], labels[section], section_problems, section_broken = _validate_entries(section, rows)
        problems.extend(section_problems)
        broken |= section_broken

    file_name = document.get("subscriptions_file")
    if file_name is not None:
        sub_path = path.parent / str(file_name)
        try:
            file_rows = _subscription_rows(sub_path)
        except Exception as exc:  # any reader failure (missing file, corrupt Parquet) is a catalog problem
            problems.append(f"subscriptions_file {sub_path}: {exc}")
        else:
            rows = [(_file_label(sub_path.name, i + 1, raw), raw) for i, raw in enumerate(file_rows)]
            subs, sub_labels, file_problems, _ = _validate_entries("subscriptions", rows)
            valid["subscriptions"] += subs
            labels["subscriptions"] += sub_labels
            problems.extend(file_problems)

    # References to entries that already failed validation would only repeat their problem.
    problems.extend(
        p
        for p in cross_check(valid["meters"], valid["prices"], valid["subscriptions"], labels)
        if not any(f"unknown meter {b!r}" in p or f"unknown price {b!r}" in p for b in broken)
    )
    if problems:
        raise CatalogError(problems, path)
    return Catalog(meters=valid["meters"], prices=valid["prices"], subscriptions=valid["subscriptions"])


def _file_label(file_name: str, row: int, raw: Mapping[str, Any]) -> str:
    entry_id = raw.get("id")
    return f"{file_name} row {row}" + (f" (id {entry_id!r})" if entry_id is not None else "")
