"""Currencies' minor units (ISO 4217): how many digits an amount of each currency is
rounded to, and amounts written with exactly those digits. The pricing catalog checks
its currencies against this table, the export writes minor units by it, and the
quality checks test invoice lines against it."""
from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column
from pyspark.sql import functions as F

# Digits of each currency's minor unit (ISO 4217); every other currency has 2.
MINOR_UNIT_DIGITS: dict[str, int] = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV",
                     "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}
DEFAULT_MINOR_UNIT_DIGITS = 2


def minor_unit_digits(currency: str | None) -> int:
    return MINOR_UNIT_DIGITS.get((currency or "").upper(), DEFAULT_MINOR_UNIT_DIGITS)


def by_minor_digits(currency: str, at: Callable[[int], str]) -> str:
    """SQL CASE picking `at(digits)` by the currency's minor-unit digits (Spark's round and
    casts need a literal scale, so each scale gets its own branch)."""
    branches = []
    for digits in sorted(set(MINOR_UNIT_DIGITS.values())):
        codes = ", ".join(f"'{c}'" for c, d in sorted(MINOR_UNIT_DIGITS.items()) if d == digits)
        branches.append(f"WHEN upper({currency}) IN ({codes}) THEN {at(digits)}")
    return f"CASE {' '.join(branches)} ELSE {at(DEFAULT_MINOR_UNIT_DIGITS)} END"


def money_string(amount: str, currency: str) -> Column:
    """A decimal amount as text with exactly the currency's minor digits: 41.5 USD -> '41.50'."""
    return F.expr(by_minor_digits(currency, lambda d: f"CAST(CAST({amount} AS decimal(38,{d})) AS string)"))
