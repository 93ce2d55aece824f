"""Billing export transforms and the export gate: pure functions on tiny inline rows."""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import stat
import tempfile
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from chispa import assert_df_equality
from pyspark.sql import Row

from pipelines.billing import export
from pipelines.billing.export import (FINANCE_COLUMNS, adjustment_lines, file_problem, finance_cells,
                                      neutralise_cell, pending_lines, provider_record, sha256_file)
from pipelines.quality.checks import CRITICAL_CHECKS, critical_line_failures, reconcile_period_usage
from pipelines.core.tables import spec
from tests.unit.frames import local_frame

MAY, JUNE, JULY = (datetime(2024, m, 1, tzinfo=UTC) for m in (5, 6, 7))
NOW = datetime(2024, 7, 2, tzinfo=UTC)
COMPARED = ["idempotency_key", "account_id", "period", "line_type", "plan_id", "charge", "product", "amount",
            "currency", "status", "adjusts_key", "reason"]


def frame(spark, table: str, rows: list[dict]):
    schema = spec(table).struct_type()
    return local_frame(spark, [tuple(r.get(c) for c in schema.fieldNames()) for r in rows], schema)


def line(key, amount, *, account="a1", line_type="usage", status="final", currency="USD", period="2024-05",
         adjusts_key=None, reason=None, period_end=JUNE, charge="billable_tickets", **extra) -> dict:
    return {"idempotency_key": key, "account_id": account, "period": period, "period_start": MAY,
            "period_end": period_end, "line_type": line_type, "plan_id": "pro", "charge": charge,
            "product": "helpdesk", "segment_start": MAY, "segment_end": period_end,
            "amount": None if amount is None else Decimal(amount), "currency": currency, "status": status,
            "adjusts_key": adjusts_key, "reason": reason, **extra}


def exported(key, amount, *, adjusts_key=None, state="delivered") -> dict:
    return {"idempotency_key": key, "export_id": "exp-1", "account_id": "a1", "period": "2024-05",
            "line_type": "adjustment" if adjusts_key else "usage", "charge": "billable_tickets",
            "amount": Decimal(amount), "currency": "USD", "adjusts_key": adjusts_key, "state": state}


def adj_key(target: str, prior: int, accounted: str, now: str) -> str:
    return hashlib.sha256(f"adjustment|{target}|{prior}|{accounted}|{now}".encode()).hexdigest()


def adjustments(spark, lines: list[dict], ledger: list[dict]):
    return adjustment_lines(frame(spark, "gold.invoice_lines", lines), frame(spark, "gold.billing_exports", ledger),
                            computed_at=NOW)


def expected(spark, rows: list[dict]):
    return frame(spark, "gold.invoice_lines", rows).select(*COMPARED)


def test_no_change_no_adjustment(spark):
    out = adjustments(spark, [line("L1", "41.50"), line("L2", "10.00", line_type="base", charge="base_fee")],
                      [exported("L1", "41.50"), exported("L2", "10.00")])
    assert out.count() == 0


def test_lines_never_exported_estimates_and_null_amounts_get_no_adjustment(spark):
    out = adjustments(spark, [line("L1", "41.50"), line("L2", "5.00", status="estimate"), line("L3", None)],
                      [exported("L2", "4.00"), exported("L3", "1.00")])
    assert out.count() == 0


def test_amount_up_adjusts_by_the_difference(spark):
    out = adjustments(spark, [line("L1", "47.50")], [exported("L1", "41.50")])
    want = line(adj_key("L1", 0, "41.500000", "47.500000"), "6.00", line_type="adjustment", adjusts_key="L1",
                reason="usage changed after export: exported 41.50 USD, now 47.50 USD")
    assert_df_equality(out.select(*COMPARED), expected(spark, [want]), ignore_nullable=True, ignore_metadata=True)
    row = out.first()
    assert (row["units"], row["billable_units"], row["computed_at"] is not None) == (None, None, True)


def test_amount_down_is_a_negative_adjustment(spark):
    out = adjustments(spark, [line("B1", "8.00", line_type="base", charge="base_fee")],
                      [exported("B1", "10.00")])
    want = line(adj_key("B1", 0, "10.000000", "8.000000"), "-2.00", line_type="adjustment", adjusts_key="B1",
                charge="base_fee", reason="amount changed after export: exported 10.00 USD, now 8.00 USD")
    assert_df_equality(out.select(*COMPARED), expected(spark, [want]), ignore_nullable=True, ignore_metadata=True)


def test_second_change_adjusts_only_the_new_difference(spark):
    ledger = [exported("L1", "41.50"), exported("A1", "6.00", adjusts_key="L1")]
    out = adjustments(spark, [line("L1", "50.00"), line("A1", "6.00", line_type="adjustment", adjusts_key="L1")],
                      ledger)
    want = line(adj_key("L1", 1, "47.500000", "50.000000"), "2.50", line_type="adjustment", adjusts_key="L1",
                reason="usage changed after export: exported 47.50 USD, now 50.00 USD")
    assert_df_equality(out.select(*COMPARED), expected(spark, [want]), ignore_nullable=True, ignore_metadata=True)


def test_adjustment_written_but_not_exported_yet_counts(spark):
    """A run that crashed after writing its adjustment line: the rerun adds nothing, and a
    further change is measured against what the pending adjustment already carries."""
    pending = line("A1", "6.00", line_type="adjustment", adjusts_key="L1")
    assert adjustments(spark, [line("L1", "47.50"), pending], [exported("L1", "41.50")]).count() == 0
    out = adjustments(spark, [line("L1", "49.50"), pending], [exported("L1", "41.50")])
    assert [(r["amount"], r["reason"]) for r in out.collect()] == [
        (Decimal("2.000000"), "usage changed after export: exported 47.50 USD, now 49.50 USD")]


def test_change_back_and_forth_gets_a_fresh_key(spark):
    ledger = [exported("L1", "41.50"), exported("A1", "6.00", adjusts_key="L1"),
              exported("A2", "-6.00", adjusts_key="L1")]
    out = adjustments(spark, [line("L1", "47.50")], ledger).collect()
    assert [(r["amount"], r["idempotency_key"]) for r in out] == [
        (Decimal("6.000000"), adj_key("L1", 2, "41.500000", "47.500000"))]
    assert out[0]["idempotency_key"] != adj_key("L1", 0, "41.500000", "47.500000")


def test_zero_decimal_currency_reason(spark):
    out = adjustments(spark, [line("L1", "1200", currency="JPY")], [exported("L1", "1000")]).collect()
    assert out[0]["reason"] == "usage changed after export: exported 1000 JPY, now 1200 JPY"


def test_pending_lines_are_final_and_not_in_the_ledger(spark):
    lines = frame(spark, "gold.invoice_lines", [line("L1", "1.00"), line("L2", "2.00"),
                                                line("L3", "3.00", status="estimate"),
                                                line("A1", "-1.00", line_type="adjustment", adjusts_key="L1")])
    out = pending_lines(lines, frame(spark, "gold.billing_exports", [exported("L1", "1.00")]))
    assert sorted(r["idempotency_key"] for r in out.collect()) == ["A1", "L2"]


# ---------------------------------------------------------------- file cells


def ledger_row(**overrides) -> Row:
    base = {c: None for c in spec("gold.billing_exports").column_names}
    base.update(exported("L1", "41.50"))
    base.update(overrides)
    return Row(**base)


def test_provider_record_minor_units_as_strings():
    record = provider_record(ledger_row(amount=Decimal("-6.500000"), line_type="adjustment", adjusts_key="L0",
                                        reason="usage changed after export"))
    assert record["unit_amount_decimal"] == "-650"
    assert record["currency"] == "usd"
    assert record["period"] == {"start": "2024-05-01T00:00:00Z", "end": "2024-06-01T00:00:00Z"}
    assert record["metadata"]["adjusts_key"] == "L0"
    assert provider_record(ledger_row(period="2024-12", amount=Decimal("1200"), currency="JPY"))["period"] == {
        "start": "2024-12-01T00:00:00Z", "end": "2025-01-01T00:00:00Z"}
    with pytest.raises(ValueError, match="minor units"):
        provider_record(ledger_row(amount=Decimal("1.005")))


@pytest.mark.parametrize("cell, shown", [
    ("=cmd()", "'=cmd()"), ("+1", "'+1"), ("-2", "'-2"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("a=b", "a=b"), ("", ""), ("acct-1", "acct-1"),
    # after leading whitespace or quote characters
    (" =1+1", "' =1+1"), ("\t=1", "'\t=1"), ("\n-1", "'\n-1"), ('"=1', "'\"=1"), ("'+1", "''+1"), (" \"' @x", "' \"' @x"),
    # at list separators: each piece a spreadsheet could split off
    ("acct;=1+1", "acct;'=1+1"), ("a, =b", "a,' =b"), ("a;\t-1", "a;'\t-1"), ("=a;=b,=c", "'=a;'=b,'=c"),
    ("a;b, c", "a;b, c"), ("usage changed after export: exported 41.50 USD, now 47.50 USD",
                           "usage changed after export: exported 41.50 USD, now 47.50 USD"),
])
def test_neutralise_cell(cell, shown):
    assert neutralise_cell(cell) == shown


def test_finance_cells_sign_in_direction_column_and_formulas_neutralised():
    cells = finance_cells(ledger_row(account_id="=cmd()", amount=Decimal("-6.5"), line_type="adjustment",
                                     reason="-x", adjusts_key="L0"))
    buf = io.StringIO()
    csv.writer(buf).writerow(cells)
    seen = dict(zip(FINANCE_COLUMNS, next(csv.reader(io.StringIO(buf.getvalue())))))
    assert (seen["account_id"], seen["amount"], seen["direction"], seen["reason"]) == ("'=cmd()", "6.50", "credit", "'-x")
    assert finance_cells(ledger_row())[FINANCE_COLUMNS.index("direction")] == "charge"


# ---------------------------------------------------------------- durable, private files (no Spark)


def _runs_a_formula(cell: str) -> bool:
    """What a spreadsheet does with a cell it reads: text after a leading ' ; a formula
    when, after whitespace and quotes, it starts with = + - @."""
    stripped = cell.lstrip(" \t\r\n\"")
    return not cell.startswith("'") and stripped[:1] in ("=", "+", "-", "@")


def test_finance_csv_every_cell_quoted_and_safe_whatever_the_list_separator(tmp_path):
    rows = [ledger_row(account_id="acct;=1+1", amount=Decimal("-6.5"), line_type="adjustment", adjusts_key="L0",
                       reason="x, =HYPERLINK(1);-2"),
            ledger_row(idempotency_key="L2", account_id=" =cmd()", amount=Decimal("12.34")),
            ledger_row(idempotency_key="L3", account_id="\t@x", amount=Decimal("-0.5"))]
    export._write_files(iter(rows), tmp_path / "e" / "provider.jsonl", tmp_path / "e" / "finance.csv")
    text = (tmp_path / "e" / "finance.csv").read_bytes().decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-1] == "" and len(lines) == 5
    assert lines[0] == ",".join(f'"{c}"' for c in FINANCE_COLUMNS)
    parsed = list(csv.reader(io.StringIO(text)))
    cells = [dict(zip(FINANCE_COLUMNS, r)) for r in parsed[1:]]
    assert [(c["account_id"], c["direction"], c["amount"]) for c in cells] == [
        ("acct;'=1+1", "credit", "6.50"), ("' =cmd()", "charge", "12.34"), ("'\t@x", "credit", "0.50")]
    assert cells[0]["reason"] == "x,' =HYPERLINK(1);'-2"
    # amounts stay plain decimal numbers (the sign is `direction`)
    assert all(Decimal(c["amount"]) >= 0 and c["amount"].replace(".", "").isdigit() for c in cells)
    for line in lines[:-1]:  # every cell quoted
        assert line.startswith('"') and line.endswith('"')
    # read with either list separator, quote-aware or not, no piece runs as a formula
    for delimiter in (",", ";"):
        for row in csv.reader(io.StringIO(text), delimiter=delimiter):
            assert not any(_runs_a_formula(c) for c in row), (delimiter, row)
        for line in lines:
            assert not any(_runs_a_formula(c.strip('"')) for c in line.split(delimiter)), (delimiter, line)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_files_are_private_fsynced_and_the_folder_fsynced_after_the_renames(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", _fd_path(fd), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "fsync", fsync)
    monkeypatch.setattr(export.os, "replace", replace)
    os.umask(old := os.umask(0))  # the most permissive umask: the modes must not depend on it
    try:
        written = export._write_files(iter([ledger_row()]), tmp_path / "exports" / "e1" / "provider.jsonl",
                                      tmp_path / "exports" / "e1" / "finance.csv")
    finally:
        os.umask(old)
    monkeypatch.undo()
    folder = tmp_path / "exports" / "e1"
    file_syncs = [c for c in calls if c[0] == "fsync" and not c[2]]
    replaces = [c for c in calls if c[0] == "replace"]
    # both temporary files fsynced (under random names in the folder), then renamed over the final names
    assert [os.path.dirname(c[1]) for c in file_syncs] == [str(folder)] * 2
    assert [c[1] for c in file_syncs] == [c[1] for c in replaces]
    assert all(os.path.basename(c[1]).startswith((".provider.jsonl.", ".finance.csv.")) and c[1].endswith(".tmp")
               for c in file_syncs)
    assert [c[2] for c in replaces] == [str(folder / "provider.jsonl"), str(folder / "finance.csv")]
    # the folder is fsynced after the last rename; the exports root after the folder was created
    last_rename = calls.index(replaces[-1])
    assert ("fsync", str(folder), True) in calls[last_rename:]
    assert ("fsync", str(tmp_path / "exports"), True) in calls
    assert ("fsync", str(tmp_path), True) in calls
    for name in ("provider.jsonl", "finance.csv"):
        assert stat.S_IMODE(os.lstat(folder / name).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(tmp_path / "exports").st_mode) == 0o700
    assert sorted(os.listdir(folder)) == ["finance.csv", "provider.jsonl"]
    assert (written.provider_sha256, written.finance_sha256) == (
        sha256_file(folder / "provider.jsonl"), sha256_file(folder / "finance.csv"))
    assert written.finance_sha256 == hashlib.sha256((folder / "finance.csv").read_bytes()).hexdigest()


def test_a_planted_symlink_is_never_followed(tmp_path):
    folder = tmp_path / "e1"
    folder.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    # the old fixed temporary names, a random-looking one, and the final name itself
    for name in (".provider.jsonl.tmp", ".finance.csv.tmp", ".finance.csv.k2j4h5g6.tmp", "finance.csv"):
        (folder / name).symlink_to(victim)
    export._write_files(iter([ledger_row()]), folder / "provider.jsonl", folder / "finance.csv")
    assert victim.read_text() == "keep me"
    for name in ("provider.jsonl", "finance.csv"):
        info = os.lstat(folder / name)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    # leftovers at temporary-like names are removed (unlink removes the link, not its target)
    assert sorted(os.listdir(folder)) == ["finance.csv", "provider.jsonl"]


def test_the_temporary_file_is_created_exclusively(tmp_path, monkeypatch):
    """Even when a planted symlink has exactly the name the random generator draws, it is
    neither opened nor followed: creation is O_EXCL|O_NOFOLLOW, and the next name is used."""
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (tmp_path / ".finance.csv.PLANTED.tmp").symlink_to(victim)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["PLANTED", "fresh"]))
    fd, path = export._private_temporary(tmp_path / "finance.csv")
    with os.fdopen(fd, "w") as out:
        out.write("data")
    assert path == tmp_path / ".finance.csv.fresh.tmp"
    assert victim.read_text() == "keep me" and stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_a_folder_planted_as_a_symlink_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "e1").symlink_to(elsewhere)
    with pytest.raises(export.ExportIntegrityError, match="not a directory"):
        export._write_files(iter([ledger_row()]), tmp_path / "e1" / "provider.jsonl", tmp_path / "e1" / "finance.csv")
    assert list(elsewhere.iterdir()) == []


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    folder = tmp_path / "e1"
    with pytest.raises(ValueError, match="minor units"):
        export._write_files(iter([ledger_row(), ledger_row(amount=Decimal("1.005"))]), folder / "provider.jsonl",
                            folder / "finance.csv")
    assert list(folder.iterdir()) == []


def test_file_problem_names_what_is_wrong(tmp_path):
    good = tmp_path / "finance.csv"
    good.write_bytes(b"a,b\r\n")
    digest = hashlib.sha256(b"a,b\r\n").hexdigest()
    assert file_problem(good, digest) is None
    assert file_problem(tmp_path / "gone.csv", digest) == "gone.csv is missing"
    assert file_problem(good, "0" * 64) == f"finance.csv was altered (SHA-256 {digest}, ledger {'0' * 64})"
    assert file_problem(good, None) == "finance.csv has no SHA-256 in the ledger (delivered before hashes were kept)"
    link = tmp_path / "link.csv"
    link.symlink_to(good)
    assert file_problem(link, digest) == "link.csv is not a regular file (a symlink?)"


# ---------------------------------------------------------------- gate


def usage_event(event_id, account, at, quantity, metric="billable_tickets") -> dict:
    return {"event_id": event_id, "account_id": account, "occurred_at": at, "metric": metric,
            "product": "helpdesk", "quantity": Decimal(quantity), "event_type": "usage"}


def period_usage(account, quantity, metric="billable_tickets", segment_start=MAY, plan="pro") -> dict:
    return {"account_id": account, "period": "2024-05", "period_start": MAY, "period_end": JUNE,
            "segment_start": segment_start, "segment_end": JUNE, "plan_id": plan, "product": "helpdesk",
            "metric": metric, "quantity": Decimal(quantity), "event_count": 1}


def test_reconcile_matching_totals_pass(spark):
    gold = frame(spark, "gold.period_usage", [period_usage("a1", "2"), period_usage("a1", "1.5",
                                                                                      segment_start=datetime(2024, 5, 10, tzinfo=UTC), plan="max")])
    silver = frame(spark, "silver.usage_events", [
        usage_event("e1", "a1", datetime(2024, 5, 1, tzinfo=UTC), "1"),
        usage_event("e2", "a1", datetime(2024, 5, 20, tzinfo=UTC), "2.5"),
        # outside the period: the previous month, and the next period's first instant
        usage_event("e3", "a1", datetime(2024, 4, 30, 23, 59, tzinfo=UTC), "7"),
        usage_event("e4", "a1", JUNE, "9"),
    ])
    assert reconcile_period_usage(gold, silver).count() == 0


def test_reconcile_reports_each_mismatch(spark):
    gold = frame(spark, "gold.period_usage", [period_usage("a1", "10"), period_usage("a2", "3"),
                                              period_usage("a3", "1", metric="voice_minutes")])
    silver = frame(spark, "silver.usage_events", [
        usage_event("e1", "a1", datetime(2024, 5, 3, tzinfo=UTC), "12"),   # gold short by 2
        usage_event("e2", "a2", datetime(2024, 5, 3, tzinfo=UTC), "3"),    # matches
        usage_event("e3", "a4", datetime(2024, 5, 3, tzinfo=UTC), "4"),    # silver only
        usage_event("e4", "a3", datetime(2024, 5, 3, tzinfo=UTC), "1", metric="sms_segments"),  # other metric
    ])
    out = reconcile_period_usage(gold, silver)
    got = sorted((r["account_id"], r["metric"], r["gold_quantity"], r["silver_quantity"], r["difference"])
                 for r in out.collect())
    d = Decimal
    assert got == [
        ("a1", "billable_tickets", d("10.000000"), d("12.000000"), d("-2.000000")),
        ("a3", "sms_segments", d("0E-6"), d("1.000000"), d("-1.000000")),
        ("a3", "voice_minutes", d("1.000000"), d("0E-6"), d("1.000000")),
        ("a4", "billable_tickets", d("0E-6"), d("4.000000"), d("-4.000000")),
    ]


def test_critical_checks_each_failure_found(spark):
    lines = frame(spark, "gold.invoice_lines", [
        line("ok-usage", "41.50"),
        line("ok-adjustment", "-6.00", line_type="adjustment", adjusts_key="ok-usage"),
        line("ok-estimate", "5.00", status="estimate", period="2024-07", period_end=datetime(2024, 8, 1, tzinfo=UTC)),
        line("no-amount", None),
        line("no-currency", "1.00", currency=None),
        line("negative", "-1.00"),
        line("half-cent", "1.005"),
        line("yen-fraction", "100.5", currency="JPY"),
        line("too-early", "1.00", period="2024-07", period_end=datetime(2024, 8, 1, tzinfo=UTC)),
        line("dup", "1.00"), line("dup", "2.00"),
        line(None, "1.00"),
    ])
    got = sorted((r["check"], r["idempotency_key"] or "") for r in critical_line_failures(lines, now=NOW).collect())
    assert got == sorted([
        ("amount_not_null", "no-amount"),
        ("currency_not_null", "no-currency"),
        ("no_negative_charge", "negative"),
        ("amount_in_minor_units", "half-cent"),
        ("amount_in_minor_units", "yen-fraction"),
        ("final_only_when_period_over", "too-early"),
        ("idempotency_key_unique", "dup"), ("idempotency_key_unique", "dup"),
        ("idempotency_key_not_null", ""),
    ])
    assert {c.name for c in CRITICAL_CHECKS} == {name for name, _ in got}


def test_critical_checks_pass_on_clean_lines(spark):
    lines = frame(spark, "gold.invoice_lines", [line("a", "1.00"), line("b", "0", line_type="base"),
                                                line("c", "-3.00", line_type="adjustment", adjusts_key="a")])
    assert critical_line_failures(lines, now=NOW).count() == 0


def test_a_file_system_that_cannot_sync_a_directory_is_warned_about_not_fatal(tmp_path, monkeypatch, caplog):
    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(export.os, "fsync", fsync)
    export.fsync_dir(tmp_path)
    assert "cannot fsync directory" in caplog.text

    def failing(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(export.os, "fsync", failing)
    with pytest.raises(OSError, match="I/O error"):
        export.fsync_dir(tmp_path)
