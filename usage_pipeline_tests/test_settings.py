"""Configuration: SPEC 8 defaults, ISO 8601 or seconds durations, errors that name the variable."""

from __future__ import annotations

from datetime import timedelta

import pytest

from usage_pipeline.defs.resources import PipelineSettings
from usage_pipeline.settings import ConfigError, load_settings


def test_defaults_are_the_specs():
    s = load_settings({})
    assert (s.bucket, s.prefix, s.lake, s.lake_data) == (
        "usage-events",
        "incoming/",
        "sqlite:data/usage.sqlite",
        "data/lake/",
    )
    assert s.max_file_bytes == 1 << 30
    assert (s.max_event_age, s.max_future_skew, s.close_grace) == (
        timedelta(days=35),
        timedelta(minutes=5),
        timedelta(hours=1),
    )
    assert (s.run_max_files, s.run_max_bytes, s.tick_max_runs) == (500, 10 * 10**9, 4)
    assert s.catalog_path.endswith("example.yaml")


def test_durations_accept_iso_8601_and_seconds_and_empty_means_default():
    s = load_settings({"USAGE_MAX_EVENT_AGE": "P7D", "USAGE_CLOSE_GRACE": "5400", "USAGE_BUCKET": " "})
    assert s.max_event_age == timedelta(days=7)
    assert s.close_grace == timedelta(minutes=90)
    assert s.bucket == "usage-events"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"USAGE_MAX_EVENT_AGE": "thirty days"}, "USAGE_MAX_EVENT_AGE"),
        ({"USAGE_MAX_FILE_BYTES": "-1"}, "USAGE_MAX_FILE_BYTES"),
        ({"USAGE_RUN_MAX_FILES": "many"}, "USAGE_RUN_MAX_FILES"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        load_settings(env)


def test_the_dagster_settings_resource_round_trips_the_settings():
    s = load_settings(
        {"USAGE_MAX_EVENT_AGE": "P10D", "USAGE_TICK_LIST_SECONDS": "12.5", "USAGE_PREFIX": "in/"}
    )
    back = PipelineSettings.from_settings(s).get()
    assert back.model_dump(exclude={"s3_endpoint_url", "lake"}) == s.model_dump(
        exclude={"s3_endpoint_url", "lake"}
    )
