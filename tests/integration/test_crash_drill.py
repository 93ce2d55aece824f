"""The crash drill at CI size: a few thousand events, SIGKILLs of the running pipeline and
one broker restart on the drill's own broker; every table must equal the uninterrupted
reference run row for row (bench/drill_crash.py has the full-size command)."""
from __future__ import annotations

import json

import pytest

from bench import drill_crash

# Its own broker on its own port: needs neither the shared broker nor the suite's session.
pytestmark = pytest.mark.drill

def test_kills_and_a_broker_restart_change_nothing(tmp_path):
    status = drill_crash.main(["--events", "2500", "--accounts", "30", "--kills", "2", "--min-run", "0",
                               "--max-run", "12", "--port", "19192", "--max-offsets-per-trigger", "500",
                               "--out", str(tmp_path / "drill")])
    summary = json.loads((tmp_path / "drill" / "summary.json").read_text())
    assert summary["kills_survived"] == 2 and summary["broker_restarts"] == 1
    assert summary["bronze_rows"] == summary["bronze_distinct_records"] == summary["kafka_records"] >= 2500
    assert summary["silver_events"] > 2000 and summary["silver_identity_duplicates"] == 0
    for table, t in summary["tables"].items():
        assert (t["extra"], t["missing"]) == (0, 0), f"{table} differs from the uninterrupted run: {t}"
        assert t["rows"] == t["reference_rows"]
    assert summary["tables"]["gold.invoice_lines"]["rows"] > 0 and summary["tables"]["gold.billing_exports"]["rows"] > 0
    assert status == 0
