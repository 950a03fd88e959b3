"""Metering definitions: the daily-partitioned metering multi-asset and its check."""
