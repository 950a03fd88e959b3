"""Billing definitions: line items and invoices, their checks, the period-close job and schedule."""
