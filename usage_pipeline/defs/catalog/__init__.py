"""Catalog definitions: the catalog multi-asset that publishes meters, prices and subscriptions."""
