"""Billing exports against real Delta tables in a temporary lake and real files: exactly
once across reruns and crashes, adjustments after late changes, the gate, CSV safety, and
durable, private files checked against the ledger's SHA-256 on every run."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from pipelines.billing import export
from pipelines.billing.export import ExportRefused, run_export
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake, spec
from tests.unit.frames import local_frame

MAY, JUNE, JULY, AUGUST = (datetime(2024, m, 1, tzinfo=UTC) for m in (5, 6, 7, 8))
NOW = datetime(2024, 7, 2, tzinfo=UTC)
LATER = datetime(2024, 7, 3, tzinfo=UTC)
CRAFTED = "=cmd()"  # an account id a spreadsheet would run as a formula


def line(key, account, amount, *, line_type="usage", currency="USD", period="2024-05", start=MAY, end=JUNE,
         status="final") -> dict:
    return {"idempotency_key": key, "account_id": account, "period": period, "period_start": start,
            "period_end": end, "line_type": line_type, "plan_id": "pro",
            "charge": "base_fee" if line_type == "base" else "billable_tickets",
            "product": None if line_type == "base" else "helpdesk", "segment_start": start, "segment_end": end,
            "amount": Decimal(amount), "currency": currency, "status": status, "computed_at": NOW}


def usage_total(account, quantity) -> dict:
    return {"account_id": account, "period": "2024-05", "period_start": MAY, "period_end": JUNE,
            "segment_start": MAY, "segment_end": JUNE, "plan_id": "pro", "product": "helpdesk",
            "metric": "billable_tickets", "quantity": Decimal(quantity), "event_count": 2, "computed_at": NOW}


def event(event_id, account, at, quantity) -> dict:
    return {"event_id": event_id, "account_id": account, "event_type": "usage", "occurred_at": at,
            "product": "helpdesk", "metric": "billable_tickets", "quantity": Decimal(quantity)}


def lines_for(account: str = "acct-1") -> list[dict]:
    return [line("B1", account, "10.00", line_type="base"), line("U1", account, "41.50"),
            line("B2", CRAFTED, "20.00", line_type="base", currency="EUR"),
            # the open period: an estimate, never exported
            line("E1", account, "3.00", period="2024-07", start=JULY, end=AUGUST, status="estimate")]


def events_for(account: str = "acct-1", second: str = "33") -> list[dict]:
    return [event("e1", account, datetime(2024, 5, 3, tzinfo=UTC), "50"),
            event("e2", account, datetime(2024, 5, 20, tzinfo=UTC), second),
            event("e3", account, datetime(2024, 7, 1, 12, tzinfo=UTC), "5")]


def write(spark, lake: Lake, table: str, rows: list[dict], mode: str = "append") -> None:
    lake.ensure(spark, table)
    schema = spec(table).struct_type()
    df = local_frame(spark, [tuple(r.get(c) for c in schema.fieldNames()) for r in rows], schema)
    df.write.format("delta").mode(mode).save(lake.path(table))


def reprice(spark, lake: Lake, key: str, amount: str) -> None:
    """What the billing job does to a recomputed line: same key, new amount."""
    lake.delta(spark, "gold.invoice_lines").update(f"idempotency_key = '{key}'",
                                                   {"amount": f"CAST({amount} AS decimal(38,6))"})


def seeded_lake(spark, root: Path, account: str = "acct-1", second_event: str = "33") -> Lake:
    lake = Lake(Settings().with_overrides(lake_root=str(root / "lake")))
    write(spark, lake, "gold.invoice_lines", lines_for(account))
    write(spark, lake, "gold.period_usage", [usage_total(account, "83")])
    write(spark, lake, "silver.usage_events", events_for(account, second_event))
    return lake


def ledger(spark, lake: Lake) -> list[tuple]:
    return sorted(tuple(r) for r in lake.read(spark, "gold.billing_exports")
                  .select("idempotency_key", "export_id", "state", "amount", "adjusts_key", "reason").collect())


def files(result) -> tuple[bytes, bytes]:
    return result.provider_file.read_bytes(), result.finance_file.read_bytes()


def export_files(root: Path, export_id: str) -> tuple[bytes, bytes]:
    folder = root / export_id
    return (folder / "provider.jsonl").read_bytes(), (folder / "finance.csv").read_bytes()


@pytest.fixture(scope="module")
def reference(spark, tmp_path_factory):
    """An uncrashed run on the standard lines, exported twice."""
    root = tmp_path_factory.mktemp("export-reference")
    lake = seeded_lake(spark, root)
    first = run_export(spark, lake, exports_dir=root / "exports", now=NOW)
    content = files(first)
    second = run_export(spark, lake, exports_dir=root / "exports", now=LATER)
    return {"first": first, "second": second, "files": content, "ledger": ledger(spark, lake), "root": root}


def test_export_twice_exports_nothing_new(reference):
    first, second = reference["first"], reference["second"]
    assert (first.lines, first.adjustments, first.resumed) == (3, 0, ())
    assert first.amounts == {"USD": Decimal("51.50"), "EUR": Decimal("20.00")}
    assert first.provider_file == reference["root"] / "exports" / first.export_id / "provider.jsonl"
    assert (second.export_id, second.lines, second.resumed) == (None, 0, ())
    assert reference["ledger"] == [(k, first.export_id, "delivered", Decimal(a).quantize(Decimal("0.000001")), None, None)
                                   for k, a in (("B1", "10.00"), ("B2", "20.00"), ("U1", "41.50"))]
    provider, finance = reference["files"]
    records = [json.loads(x) for x in provider.decode().splitlines()]
    assert [r["idempotency_key"] for r in records] == ["B1", "B2", "U1"]
    assert records[2] == {
        "idempotency_key": "U1", "customer": "acct-1",
        "period": {"start": "2024-05-01T00:00:00Z", "end": "2024-06-01T00:00:00Z"},
        "description": "Usage billable_tickets 2024-05", "quantity": 1, "unit_amount_decimal": "4150",
        "currency": "usd",
        "metadata": {"export_id": first.export_id, "period": "2024-05", "line_type": "usage",
                     "charge": "billable_tickets"},
    }
    rows = list(csv.DictReader(io.StringIO(finance.decode())))
    assert [(r["idempotency_key"], r["account_id"], r["direction"], r["amount"], r["currency"]) for r in rows] == [
        ("B1", "acct-1", "charge", "10.00", "USD"), ("B2", "'=cmd()", "charge", "20.00", "EUR"),
        ("U1", "acct-1", "charge", "41.50", "USD")]
    assert finance.startswith(b'"export_id","idempotency_key","account_id",')


def test_crash_after_files_before_delivered_reruns_to_the_same_export(spark, tmp_path, monkeypatch, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"

    def crash(*_args, **_kwargs):
        raise RuntimeError("crash before the ledger says delivered")

    monkeypatch.setattr(export, "_mark_delivered", crash)
    with pytest.raises(RuntimeError, match="crash before"):
        run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    export_id = reference["first"].export_id
    assert {r[2] for r in ledger(spark, lake)} == {"staged"}
    assert export_files(exports_dir, export_id) == reference["files"]

    monkeypatch.undo()
    rerun = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert (rerun.export_id, rerun.resumed) == (None, (export_id,))
    assert ledger(spark, lake) == reference["ledger"]
    assert export_files(exports_dir, export_id) == reference["files"]
    assert sorted(p.name for p in (exports_dir / export_id).iterdir()) == ["finance.csv", "provider.jsonl"]


def test_crash_before_files_rerun_finishes_the_staged_export(spark, tmp_path, monkeypatch, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"

    def crash(*_args, **_kwargs):
        raise RuntimeError("crash before the files")

    monkeypatch.setattr(export, "_write_files", crash)
    with pytest.raises(RuntimeError, match="crash before the files"):
        run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    export_id = reference["first"].export_id
    assert {(r[1], r[2]) for r in ledger(spark, lake)} == {(export_id, "staged")}
    assert not (exports_dir / export_id / "provider.jsonl").exists()

    monkeypatch.undo()
    rerun = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert rerun.resumed == (export_id,)
    assert ledger(spark, lake) == reference["ledger"]
    assert export_files(exports_dir, export_id) == reference["files"]


def test_late_changes_export_only_the_difference_and_credits_stay_readable_in_csv(spark, tmp_path):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"
    first = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    # a late event: 6 more tickets in May, the billing job reprices U1 (same key) 41.50 -> 47.50
    write(spark, lake, "silver.usage_events", [event("late", "acct-1", datetime(2024, 5, 30, tzinfo=UTC), "6")])
    write(spark, lake, "gold.period_usage", [usage_total("acct-1", "89")], mode="overwrite")
    reprice(spark, lake, "U1", "47.50")

    second = run_export(spark, lake, exports_dir=exports_dir, now=LATER)
    assert (second.lines, second.adjustments, second.amounts) == (1, 1, {"USD": Decimal("6.00")})
    assert second.export_id not in (None, first.export_id)
    reason = "usage changed after export: exported 41.50 USD, now 47.50 USD"
    adjustments = [r for r in ledger(spark, lake) if r[4] is not None]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in adjustments] == [
        (second.export_id, "delivered", Decimal("6.000000"), "U1", reason)]
    in_gold = (lake.read(spark, "gold.invoice_lines").filter("line_type = 'adjustment'")
               .select("idempotency_key", "adjusts_key", "amount", "status", "reason").collect())
    assert [tuple(r) for r in in_gold] == [(adjustments[0][0], "U1", Decimal("6.000000"), "final", reason)]
    record = json.loads(second.provider_file.read_text())
    assert (record["unit_amount_decimal"], record["metadata"]["adjusts_key"]) == ("600", "U1")

    # then the base fee of the account named "=cmd()" is repriced down: a credit, in the CSV too
    reprice(spark, lake, "B2", "15.00")
    credit = run_export(spark, lake, exports_dir=exports_dir, now=LATER)
    assert (credit.lines, credit.adjustments, credit.amounts) == (1, 1, {"EUR": Decimal("-5.00")})
    # what a spreadsheet sees: every cell as text, none starting like a formula
    rows = list(csv.reader(io.StringIO(credit.finance_file.read_text(encoding="utf-8"))))
    header, cells = rows[0], dict(zip(rows[0], rows[1]))
    assert len(rows) == 2 and header == export.FINANCE_COLUMNS
    assert (cells["account_id"], cells["line_type"], cells["direction"], cells["amount"], cells["currency"]) == (
        "'=cmd()", "adjustment", "credit", "5.00", "EUR")
    assert cells["reason"] == "amount changed after export: exported 20.00 EUR, now 15.00 EUR"
    assert not any(c.startswith(("=", "+", "-", "@")) for row in rows for c in row)
    # the provider file is JSON, not a spreadsheet: the customer id stays as it is, the credit is signed
    record = json.loads(credit.provider_file.read_text())
    assert (record["customer"], record["unit_amount_decimal"], record["currency"]) == ("=cmd()", "-500", "eur")

    assert run_export(spark, lake, exports_dir=exports_dir, now=LATER).export_id is None


def test_gate_refuses_on_mismatch_and_writes_nothing(spark, tmp_path):
    lake = seeded_lake(spark, tmp_path, second_event="30")  # silver has 80 tickets, gold bills 83
    exports_dir = tmp_path / "exports"
    lines_version = lake.delta(spark, "gold.invoice_lines").history(1).first()["version"]
    with pytest.raises(ExportRefused) as refused:
        run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    message = str(refused.value)
    assert "export refused for period(s) 2024-05" in message
    assert "reconcile_period_usage" in message
    assert "account acct-1, period 2024-05, metric billable_tickets: gold.period_usage 83.000000, " \
           "silver.usage_events 80.000000 (difference 3.000000)" in message
    assert list(refused.value.failures) == ["reconcile_period_usage"]
    assert not exports_dir.exists()
    assert ledger(spark, lake) == []
    assert lake.delta(spark, "gold.invoice_lines").history(1).first()["version"] == lines_version


def test_crash_inside_the_staging_write_leaves_nothing_and_the_rerun_is_the_same_export(
        spark, tmp_path, monkeypatch, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"

    def crash(*_args, **_kwargs):
        # A Delta commit is atomic: a writer killed inside the staging MERGE leaves no ledger row.
        raise RuntimeError("crash inside the ledger write")

    monkeypatch.setattr(export, "_stage", crash)
    with pytest.raises(RuntimeError, match="inside the ledger write"):
        run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert ledger(spark, lake) == [] and not exports_dir.exists()

    monkeypatch.undo()
    rerun = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert rerun.export_id == reference["first"].export_id
    assert ledger(spark, lake) == reference["ledger"]
    assert files(rerun) == reference["files"]


def test_crash_between_the_two_file_renames_is_repaired_by_the_rerun(spark, tmp_path, monkeypatch, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"
    real_replace, calls = os.replace, []

    def replace_then_crash(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("crash between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", replace_then_crash)
    with pytest.raises(OSError, match="between the renames"):
        run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    monkeypatch.undo()
    export_id = reference["first"].export_id
    rerun = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert rerun.resumed == (export_id,)
    assert ledger(spark, lake) == reference["ledger"]
    assert export_files(exports_dir, export_id) == reference["files"]
    assert sorted(p.name for p in (exports_dir / export_id).iterdir()) == ["finance.csv", "provider.jsonl"]


# ---------------------------------------------------------------- durable, private files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded_hashes(spark, lake: Lake, export_id: str) -> set[tuple]:
    return {tuple(r) for r in lake.read(spark, "gold.billing_exports").filter(f"export_id = '{export_id}'")
            .select("provider_sha256", "finance_sha256").distinct().collect()}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_delivered_files_are_private_hashed_and_rebuilt_from_the_ledger_when_missing_or_altered(
        spark, tmp_path, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"
    first = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    provider, finance = reference["files"]
    assert files(first) == (provider, finance)
    assert recorded_hashes(spark, lake, first.export_id) == {(sha256(provider), sha256(finance))}
    assert (mode(first.provider_file), mode(first.finance_file)) == (0o600, 0o600)
    assert (mode(exports_dir), mode(exports_dir / first.export_id)) == (0o700, 0o700)
    assert first.repaired == ()

    # after delivery: one file lost, the other edited by hand (finance "fixed" an amount)
    first.provider_file.unlink()
    altered = finance.replace(b'"10.00"', b'"1.00"')
    first.finance_file.write_bytes(altered)
    again = run_export(spark, lake, exports_dir=exports_dir, now=LATER)
    assert (again.export_id, again.lines) == (None, 0)
    assert again.repaired == (
        f"{first.export_id}: provider.jsonl is missing; finance.csv was altered (SHA-256 {sha256(altered)}, "
        f"ledger {sha256(finance)}); rebuilt from the ledger, SHA-256 verified",)
    assert "REPAIRED delivered export(s): " + again.repaired[0] in again.render()
    assert export_files(exports_dir, first.export_id) == (provider, finance)
    assert (mode(first.provider_file), mode(first.finance_file)) == (0o600, 0o600)
    assert ledger(spark, lake) == reference["ledger"]
    assert recorded_hashes(spark, lake, first.export_id) == {(sha256(provider), sha256(finance))}
    assert sorted(p.name for p in (exports_dir / first.export_id).iterdir()) == ["finance.csv", "provider.jsonl"]

    assert run_export(spark, lake, exports_dir=exports_dir, now=LATER).repaired == ()


def test_symlinks_planted_in_the_export_folder_are_never_followed(spark, tmp_path, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"
    export_id = reference["first"].export_id
    folder = exports_dir / export_id
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    # the temporary names the exporter used to write through, a random-looking one, a final name
    for name in (".provider.jsonl.tmp", ".finance.csv.tmp", ".finance.csv.x8Kq2z_p.tmp", "provider.jsonl"):
        (folder / name).symlink_to(victim)
    result = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    assert result.export_id == export_id
    assert victim.read_text() == "not yours"
    assert export_files(exports_dir, export_id) == reference["files"]
    assert sorted(p.name for p in folder.iterdir()) == ["finance.csv", "provider.jsonl"]
    assert all(stat.S_ISREG(os.lstat(folder / n).st_mode) and mode(folder / n) == 0o600
               for n in ("finance.csv", "provider.jsonl"))


def test_a_ledger_from_before_the_hashes_gets_the_columns_and_its_files_rebuilt_and_hashed(
        spark, tmp_path, reference):
    lake = seeded_lake(spark, tmp_path)
    exports_dir = tmp_path / "exports"
    first = run_export(spark, lake, exports_dir=exports_dir, now=NOW)
    # the ledger and the files as the previous version left them: no hash columns, mode 0644
    path = lake.path("gold.billing_exports")
    old = lake.read(spark, "gold.billing_exports").drop("provider_sha256", "finance_sha256").localCheckpoint()
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    assert "provider_sha256" not in lake.read(spark, "gold.billing_exports").columns
    for f in (first.provider_file, first.finance_file):
        f.chmod(0o644)

    again = run_export(spark, lake, exports_dir=exports_dir, now=LATER)
    assert again.export_id is None
    assert again.repaired == (
        f"{first.export_id}: provider.jsonl has no SHA-256 in the ledger (delivered before hashes were kept); "
        "finance.csv has no SHA-256 in the ledger (delivered before hashes were kept); "
        "rebuilt from the ledger, SHA-256 verified",)
    provider, finance = reference["files"]
    assert export_files(exports_dir, first.export_id) == (provider, finance)
    assert recorded_hashes(spark, lake, first.export_id) == {(sha256(provider), sha256(finance))}
    assert (mode(first.provider_file), mode(first.finance_file)) == (0o600, 0o600)
    assert ledger(spark, lake) == reference["ledger"]
    assert run_export(spark, lake, exports_dir=exports_dir, now=LATER).repaired == ()
