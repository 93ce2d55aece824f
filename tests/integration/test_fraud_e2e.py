"""Fraud flags on real Delta tables: the job flags a crafted burst once however often it
runs, stages one notification per new flag, a cleared flag stays cleared, and the export
holds a flagged account's lines until the flag is cleared."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from pipelines.billing.export import run_export
from pipelines.fraud.flags import FraudError, clear_flags, render_flags, run_fraud
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec
from tests.unit.frames import local_frame

NOW = datetime(2024, 7, 2, tzinfo=UTC)
MAY, JUNE = datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)


def write(spark, lake: Lake, table: str, rows: list[dict]) -> None:
    lake.ensure(spark, table)
    schema = spec(table).struct_type()
    local_frame(spark, [tuple(r.get(c) for c in schema.fieldNames()) for r in rows], schema) \
        .write.format("delta").mode("append").save(lake.path(table))


def signup(account, minutes, offset, **props):
    return {"event_id": f"c-{account}", "account_id": account, "event_type": "account.created",
            "occurred_at": datetime(2024, 6, 20, 9, tzinfo=UTC) + timedelta(minutes=minutes), "schema_version": 1,
            "properties": json.dumps(props), "kafka_topic": "t", "kafka_partition": 0, "kafka_offset": offset}


def base_line(key, account):
    return {"idempotency_key": key, "account_id": account, "period": "2024-05", "period_start": MAY,
            "period_end": JUNE, "line_type": "base", "plan_id": "pro", "charge": "base_fee",
            "segment_start": MAY, "segment_end": JUNE, "amount": Decimal("10.00"), "currency": "USD",
            "status": "final", "computed_at": NOW}


def flags(spark, lake):
    return sorted((r["account_id"], r["rule"], r["state"]) for r in lake.read(spark, "gold.fraud_flags").collect())


def test_flags_are_idempotent_cleared_flags_stay_cleared_and_exports_are_held(spark, tmp_path):
    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    write(spark, lake, "silver.account_events", [
        signup("bad-1", 0, 1, email_domain_hash="h-evil"), signup("bad-2", 5, 2, email_domain_hash="h-evil"),
        signup("bad-3", 9, 3, email_domain_hash="h-evil"),
        signup("good-1", 0, 4, email_domain_hash="h-shop"), signup("good-2", 300, 5, email_domain_hash="h-shop")])
    write(spark, lake, "gold.invoice_lines", [base_line("L-bad", "bad-1"), base_line("L-good", "good-1")])

    first = run_fraud(spark, lake, as_of=NOW)
    assert (first.candidates, first.new_flags, first.open_flags) == (3, 3, 3)
    assert flags(spark, lake) == [(f"bad-{i}", "signup_burst", "open") for i in (1, 2, 3)]
    if first.notifications is not None:  # one fraud.flagged notification per new flag, once
        assert first.notifications == 3
        outbox = lake.read(spark, "gold.notifications").filter("type = 'fraud.flagged'").collect()
        assert sorted(r["account_id"] for r in outbox) == ["bad-1", "bad-2", "bad-3"]
        assert json.loads(outbox[0]["payload"])["rule"] == "signup_burst"

    again = run_fraud(spark, lake, as_of=NOW)
    assert (again.new_flags, again.open_flags) == (0, 3) and again.notifications in (0, None)
    assert len(flags(spark, lake)) == 3

    # the flagged account's line is held, the other exports
    held = run_export(spark, lake, exports_dir=tmp_path / "exports", now=NOW)
    assert held.lines == 1 and held.held == ("bad-1: 1 line(s) (open fraud flag: signup_burst)",)
    assert "held: bad-1" in held.render()
    exported = {r["idempotency_key"] for r in lake.read(spark, "gold.billing_exports").collect()}
    assert exported == {"L-good"}

    with pytest.raises(FraudError, match="no open fraud flag for account 'good-1'"):
        clear_flags(spark, lake, "good-1", rule=None, by="ops", reason="x")
    assert clear_flags(spark, lake, "bad-1", rule="signup_burst", by="alice", reason="known reseller") == 1
    listed = [line.split()[0] for line in render_flags(spark, lake).splitlines()[1:]]
    assert listed == ["bad-2", "bad-3"]
    assert "cleared by alice: known reseller" in render_flags(spark, lake, include_cleared=True)

    # the same evidence does not reopen the cleared flag
    third = run_fraud(spark, lake, as_of=NOW)
    assert (third.new_flags, third.open_flags) == (0, 2)
    assert ("bad-1", "signup_burst", "cleared") in flags(spark, lake)

    released = run_export(spark, lake, exports_dir=tmp_path / "exports", now=NOW)
    assert released.lines == 1 and released.held == ()
    exported = {r["idempotency_key"] for r in lake.read(spark, "gold.billing_exports").collect()}
    assert exported == {"L-good", "L-bad"}


def test_a_run_that_dies_after_recording_its_flags_still_gets_their_notifications_staged(spark, tmp_path,
                                                                                           monkeypatch):
    """The flags MERGE commits before the notifications are staged; a rerun finds the flags
    no longer new, and must still stage what the dead run owed, once."""
    from pipelines.fraud import flags as fraud_flags

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    write(spark, lake, "silver.account_events", [
        signup("bad-1", 0, 1, email_domain_hash="h-evil"), signup("bad-2", 5, 2, email_domain_hash="h-evil"),
        signup("bad-3", 9, 3, email_domain_hash="h-evil"), signup("good-1", 0, 4, email_domain_hash="h-shop")])

    def dies(*_args, **_kwargs):
        raise RuntimeError("killed between the flags and their notifications")

    with monkeypatch.context() as patched:
        patched.setattr(fraud_flags, "_stage_notifications", dies)
        with pytest.raises(RuntimeError, match="killed between"):
            run_fraud(spark, lake, as_of=NOW)
    assert flags(spark, lake) == [(f"bad-{i}", "signup_burst", "open") for i in (1, 2, 3)]

    rerun = run_fraud(spark, lake, as_of=NOW)
    assert (rerun.new_flags, rerun.open_flags, rerun.notifications) == (0, 3, 3)
    again = run_fraud(spark, lake, as_of=NOW)
    assert again.notifications == 0
    outbox = lake.read(spark, "gold.notifications").filter("type = 'fraud.flagged'").collect()
    assert sorted(r["account_id"] for r in outbox) == ["bad-1", "bad-2", "bad-3"]
