"""The one source of truth for configuration: a typed settings object read from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

BUNDLED_CATALOG = Path(__file__).parent / "catalog" / "example.yaml"

_DURATION = TypeAdapter(timedelta)


class ConfigError(ValueError):
    """A configuration value is unusable; the message names the variable."""


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """An ISO 8601 duration (`P35D`, `PT5M`) or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    text = str(value).strip()
    try:
        return timedelta(seconds=float(text))
    except ValueError:
        pass
    return _DURATION.validate_python(text)


class Settings(BaseModel):
    """Every knob of the pipeline, with the SPEC's defaults (SPEC section 8)."""

    model_config = ConfigDict(frozen=True)

    bucket: str = "usage-events"
    prefix: str = "incoming/"
    s3_endpoint_url: str | None = None
    duckdb_path: str = "data/usage.duckdb"
    catalog_path: str = str(BUNDLED_CATALOG)
    max_file_bytes: int = Field(default=1 << 30, gt=0)
    max_event_age: timedelta = timedelta(days=35)
    max_future_skew: timedelta = timedelta(minutes=5)
    close_grace: timedelta = timedelta(hours=1)
    # Bounded work per ingest run, like Stripe's S3 connector (50 files or 10 GB per run).
    run_max_files: int = Field(default=50, gt=0)
    run_max_bytes: int = Field(default=10 * 10**9, gt=0)
    # Bounded work per sensor tick: runs requested and seconds spent listing.
    tick_max_runs: int = Field(default=20, gt=0)
    tick_list_seconds: float = Field(default=30.0, gt=0)
    # How far back a listing pass re-examines LastModified (covers clock skew and same-second uploads).
    listing_overlap: timedelta = timedelta(minutes=15)
    # How long a writer waits for the DuckDB file lock held by another process.
    duckdb_lock_timeout: timedelta = timedelta(minutes=10)
    # Stripe identifiers: how far outside a batch's event-time range stored twins are looked for.
    stripe_dedup_window: timedelta = timedelta(hours=24)
    # A listed file version with no ledger row is requested again after base * 2**(attempts - 1), capped.
    retry_backoff: timedelta = timedelta(seconds=30)
    retry_backoff_max: timedelta = timedelta(hours=1)
    # S3 calls: botocore's adaptive retry mode with this many attempts in all (first try included).
    s3_max_attempts: int = Field(default=10, gt=0)

    @field_validator(
        "max_event_age",
        "max_future_skew",
        "close_grace",
        "listing_overlap",
        "duckdb_lock_timeout",
        "stripe_dedup_window",
        "retry_backoff",
        "retry_backoff_max",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)  # type: ignore[arg-type]


# environment variable -> Settings field
ENV_VARS: dict[str, str] = {
    "USAGE_BUCKET": "bucket",
    "USAGE_PREFIX": "prefix",
    "AWS_ENDPOINT_URL_S3": "s3_endpoint_url",
    "USAGE_DUCKDB_PATH": "duckdb_path",
    "USAGE_CATALOG_PATH": "catalog_path",
    "USAGE_MAX_FILE_BYTES": "max_file_bytes",
    "USAGE_MAX_EVENT_AGE": "max_event_age",
    "USAGE_MAX_FUTURE_SKEW": "max_future_skew",
    "USAGE_CLOSE_GRACE": "close_grace",
    "USAGE_RUN_MAX_FILES": "run_max_files",
    "USAGE_RUN_MAX_BYTES": "run_max_bytes",
    "USAGE_TICK_MAX_RUNS": "tick_max_runs",
    "USAGE_TICK_LIST_SECONDS": "tick_list_seconds",
    "USAGE_LISTING_OVERLAP": "listing_overlap",
    "USAGE_DUCKDB_LOCK_TIMEOUT": "duckdb_lock_timeout",
    "USAGE_STRIPE_DEDUP_WINDOW": "stripe_dedup_window",
    "USAGE_RETRY_BACKOFF": "retry_backoff",
    "USAGE_RETRY_BACKOFF_MAX": "retry_backoff_max",
    "USAGE_S3_MAX_ATTEMPTS": "s3_max_attempts",
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment; unset or empty variables take the defaults."""
    env = os.environ if environ is None else environ
    values = {field: env[var] for var, field in ENV_VARS.items() if env.get(var, "").strip() != ""}
    try:
        return Settings(**values)
    except (ValidationError, ValueError) as exc:
        field_to_var = {field: var for var, field in ENV_VARS.items()}
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{field_to_var.get(str(err['loc'][0]), err['loc'][0])}={values.get(str(err['loc'][0]))!r}: "
                f"{err['msg']}"
                for err in exc.errors()
            )
        else:
            problems = str(exc)
        raise ConfigError(f"invalid configuration: {problems}") from exc
