"""Exactness of JSON numbers that reach a decimal column: judged on the digits as written."""
from datetime import datetime

from pipelines.contract import load_contract
from pipelines.transforms.parse import INVALID_VALUE, parse_events
from tests.unit.frames import local_frame

BASE = ('"event_id":"e","event_type":"usage","account_id":"a","occurred_at":"2026-10-01T00:00:00Z",'
        '"schema_version":1,"product":"voice","metric":"voice_minutes","quantity":')
CASES = {
    "19 decimals, nonzero far digit": ("1.0000000000000000001", INVALID_VALUE),
    "25 decimals": ("0.0000000000000000000000001", INVALID_VALUE),
    "trailing zeros past the 6th decimal": ("1.50000000000000000000", None),
    "zero with a long scale": ("0.00000000", None),
    "6 decimals": ("0.000001", None),
}


def test_quantity_decimals_are_judged_as_written(spark):
    rows = [(name, ("{" + BASE + text + "}").encode(), datetime(2026, 10, 1)) for name, (text, _) in CASES.items()]
    df = local_frame(spark, rows, "name string, value binary, ingested_at timestamp")
    got = {r["name"]: r["reason"] for r in
           df.transform(parse_events(load_contract(1))).select("name", "_problem.reason").collect()}
    assert got == {name: reason for name, (_, reason) in CASES.items()}
