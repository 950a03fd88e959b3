"""The one source of truth for configuration: a typed settings object read from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import date, timedelta
from pathlib import Path

from pydantic import AliasChoices, Field, TypeAdapter, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from usage_pipeline.core.storage.lake import Lake

BUNDLED_CATALOG = Path(__file__).parent / "core" / "catalog" / "example.yaml"

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


class Settings(BaseSettings):
    """Every knob of the pipeline, with the SPEC's defaults (SPEC section 8).

    Each field is read from `USAGE_<FIELD>` (the S3 endpoint from `AWS_ENDPOINT_URL_S3`) by
    `load_settings()`; constructed in code, a Settings holds what it is given and the defaults, nothing
    from the environment.
    """

    model_config = SettingsConfigDict(env_prefix="USAGE_", frozen=True, populate_by_name=True, extra="ignore")

    bucket: str = "usage-events"
    prefix: str = "incoming/"
    s3_endpoint_url: str | None = Field(
        default=None, validation_alias=AliasChoices("s3_endpoint_url", "AWS_ENDPOINT_URL_S3")
    )
    # The DuckLake lake (SPEC 5): its metadata catalog and where its Parquet files go.
    lake: str = "sqlite:data/usage.sqlite"
    lake_data: str = "data/lake/"
    # How long lake snapshots are kept for audits before lake maintenance expires them (a year of
    # invoices and their re-closes, with room to spare).
    lake_retention: timedelta = timedelta(days=400)
    catalog_path: str = str(BUNDLED_CATALOG)
    max_file_bytes: int = Field(default=1 << 30, gt=0)
    max_event_age: timedelta = timedelta(days=35)
    max_future_skew: timedelta = timedelta(minutes=5)
    close_grace: timedelta = timedelta(hours=1)
    # First day of the period-close partitions; unset = the catalog's earliest subscription start (UTC).
    close_start: date | None = None
    # Bounded work per ingest run (500 files or 10 GB per run). Small files share transactions, so a run
    # of many of them costs little more than one; a Dagster run costs ~1 s of its own.
    run_max_files: int = Field(default=500, gt=0)
    run_max_bytes: int = Field(default=10 * 10**9, gt=0)
    # Bounded work per sensor tick: runs requested and seconds spent listing.
    tick_max_runs: int = Field(default=4, gt=0)
    tick_list_seconds: float = Field(default=30.0, gt=0)
    # How far back a listing pass re-examines LastModified (covers clock skew and same-second uploads).
    listing_overlap: timedelta = timedelta(minutes=15)
    # How long a writer waits for a busy lake catalog (another writer's turn, commit conflicts).
    lake_busy_timeout: timedelta = timedelta(minutes=10)
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
        "lake_busy_timeout",
        "lake_retention",
        "stripe_dedup_window",
        "retry_backoff",
        "retry_backoff_max",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return parse_duration(value)  # type: ignore[arg-type]

    @field_validator("lake")
    @classmethod
    def _lake(cls, value: str) -> str:
        Lake(catalog=value)  # raises with the accepted forms
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment is read by load_settings() only


def lake_of(settings: Settings) -> Lake:
    """The lake the settings name, with the S3 access of the usage bucket for an s3:// data path."""
    secret: dict[str, str] = {}
    if settings.lake_data.startswith("s3://"):
        from usage_pipeline.core.ingest.s3 import httpfs_secret

        secret = httpfs_secret(settings.s3_endpoint_url)
    return Lake(
        catalog=settings.lake,
        data_path=settings.lake_data,
        busy_timeout_seconds=settings.lake_busy_timeout.total_seconds(),
        s3_secret=secret,
    )


class _Environment(EnvSettingsSource):
    """The variables of a given mapping (os.environ by default); blank values count as unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = {k: v for k, v in environ.items() if v.strip()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, True, self.env_parse_none_str)


def env_var(field: str) -> str:
    """The environment variable a Settings field is read from."""
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[-1])
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from the environment; unset or blank variables take the defaults."""
    env = os.environ if environ is None else environ

    class _FromEnvironment(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls, init_settings, **_sources):  # type: ignore[override]
            return (init_settings, _Environment(settings_cls, env))

    try:
        loaded = _FromEnvironment()
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_var(str(err['loc'][0])) if str(err['loc'][0]) in Settings.model_fields else err['loc'][0]}"
            f"={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    return Settings(**loaded.model_dump())


_BUILDING_WITH: ContextVar[Settings | None] = ContextVar("usage_pipeline_settings", default=None)


@contextmanager
def building_definitions_with(settings: Settings) -> Iterator[Settings]:
    """The settings that definitions built inside this block read through `definition_settings()`."""
    token = _BUILDING_WITH.set(settings)
    try:
        yield settings
    finally:
        _BUILDING_WITH.reset(token)


def definition_settings() -> Settings:
    """The settings a definition is built from: those of the enclosing `building_definitions_with`, else
    the environment's (the defs folder loaded on its own, e.g. by `dg list defs`)."""
    return _BUILDING_WITH.get() or load_settings()
