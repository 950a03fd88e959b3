"""Billing: money, pricing models, period close into pending invoices, and late usage."""
