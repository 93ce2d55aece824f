"""Billing: the pricing catalog (catalog.py), plan periods (periods.py), the pricing engine
(pricing.py), invoice lines (invoice.py), the period close job (close.py), the export gate
(gate.py), the exactly-once export job (export.py) and the reconciliation audit (audit.py)."""
