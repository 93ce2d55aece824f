"""Exactness of JSON numbers that reach a decimal column: judged on the digits as written."""
from datetime import datetime

from pipelines.core.contract import load_contract
from pipelines.ingest.parse import INVALID_VALUE, parse_events
from tests.unit.frames import local_frame

BASE = ('"event_id":"e","event_type":"usage","account_id":"a","occurred_at":"2026-10-01T00:00:00Z",'
        '"schema_version":1,"product":"voice","metric":"voice_minutes","quantity":')
CASES = {
    "19 decimals, nonzero far digit": ("1.0000000000000000001", INVALID_VALUE),
    "25 decimals": ("0.0000000000000000000000001", INVALID_VALUE),
    "trailing zeros past the 6th decimal": ("1.50000000000000000000", None),
    "zero with a long scale": ("0.00000000", None),
    "6 decimals": ("0.000001", None),
    # Exponent forms are read as doubles; one that underflows to 0 is not a zero.
    "underflow to zero": ("1e-400", INVALID_VALUE),
    "underflow after leading zeros": ("0.00001E-400", INVALID_VALUE),
    "smallest double": ("4.9e-324", INVALID_VALUE),
    "zero in exponent form": ("0e0", None),
    "negative zero in exponent form": ("-0.000e+5", None),
    "whole number in exponent form": ("1E+2", None),
    "more than 6 decimals in exponent form": ("1e-7", INVALID_VALUE),
}


def reasons(spark, tails: dict[str, str]) -> dict[str, str | None]:
    """Quarantine reason (None: passed) of each usage event `{BASE<tail>}`, by name."""
    rows = [(name, ("{" + BASE + tail + "}").encode(), datetime(2026, 10, 1)) for name, tail in tails.items()]
    df = local_frame(spark, rows, "name string, value binary, ingested_at timestamp")
    return {r["name"]: r["reason"] for r in
            df.transform(parse_events(load_contract(1))).select("name", "_problem.reason").collect()}


def test_quantity_decimals_are_judged_as_written(spark):
    got = reasons(spark, {name: text for name, (text, _) in CASES.items()})
    assert got == {name: reason for name, (_, reason) in CASES.items()}


def test_a_nested_quantity_does_not_hide_an_underflow_or_fake_one(spark):
    got = reasons(spark, {
        "nested nonzero, top-level underflow": '1e-400,"properties":{"quantity": 0}',
        "nested underflow, top-level zero": '0,"properties":{"quantity": 1e-400}',
    })
    assert got == {"nested nonzero, top-level underflow": INVALID_VALUE, "nested underflow, top-level zero": None}
