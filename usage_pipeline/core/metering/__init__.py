"""Metering: stored usage events -> quantities per subscription, meter and billing period."""
