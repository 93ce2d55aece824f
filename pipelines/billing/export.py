"""Billing exports, exactly once: gold.invoice_lines -> files for the payment provider and
for finance, recorded in the ledger gold.billing_exports.

One run (`run_export`):

1. finish every export whose ledger rows are still `staged` (a crashed run): rewrite its
   files from its ledger rows alone, in idempotency-key order, then mark it delivered;
2. compute adjustment lines: a final line already exported whose current amount differs
   from what was accounted for it (its ledger row, the adjustments of it in the ledger and
   the adjustments of it already written to gold.invoice_lines) gets one line for the
   difference, never the full amount again;
3. pending = final lines (adjustments included) whose key is not in the ledger, minus the
   lines of accounts with an open fraud flag (held, reported, exported once cleared);
   nothing pending -> nothing to do;
4. the gate (pipelines.billing.gate) over the pending lines' periods: refuses with
   ExportRefused before anything is written;
5. write the new adjustment lines to gold.invoice_lines (insert if absent, by key);
6. stage: MERGE the pending lines into the ledger as `staged` under one export_id derived
   from their keys (insert if absent, so a rerun cannot stage a key twice);
7. write provider.jsonl and finance.csv from the staged ledger rows (temp file, fsync,
   atomic rename), then mark the export `delivered` (one Delta commit).

A crash anywhere leaves either nothing staged (the rerun recomputes the same pending set,
the same adjustment keys and the same export_id) or a staged export (the rerun finishes it
from the ledger, so its files come out byte for byte the same). Every Delta write is a
single atomic commit, so "in the middle of a ledger write" is either before or after it.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.gate import (ExportRefused, check_export_gate, minor_unit_digits, money_string,
                                    period_bounds)
from pipelines.billing.periods import parse_period
from pipelines.tables import Lake, spec

__all__ = ["ExportRefused", "ExportResult", "adjustment_lines", "pending_lines", "run_export",
           "provider_record", "finance_cells", "neutralise_cell", "FINANCE_COLUMNS"]

LINES = "gold.invoice_lines"
LEDGER = "gold.billing_exports"
STAGED = "staged"
DELIVERED = "delivered"
FINAL = "final"
ADJUSTMENT = "adjustment"
PROVIDER_FILE = "provider.jsonl"
FINANCE_FILE = "finance.csv"


@dataclass(frozen=True)
class ExportResult:
    export_id: str | None
    lines: int = 0
    provider_file: Path | None = None
    finance_file: Path | None = None
    amounts: dict[str, Decimal] = field(default_factory=dict)
    adjustments: int = 0
    # Staged exports of an earlier, crashed run that this run finished first.
    resumed: tuple[str, ...] = ()
    # Lines not exported because their account has an open fraud flag, one text per account.
    held: tuple[str, ...] = ()

    def render(self) -> str:
        """One line for the run summary."""
        done = f"export: finished crashed export(s) {', '.join(self.resumed)}; " if self.resumed else "export: "
        held = f"; held: {'; '.join(self.held)}" if self.held else ""
        if self.export_id is None:
            return done + "nothing new to export" + held
        money = ", ".join(f"{amount} {currency}" for currency, amount in sorted(self.amounts.items()))
        return (done + f"{self.export_id}: {self.lines} line(s), {self.adjustments} adjustment(s), {money} "
                f"-> {self.provider_file}, {self.finance_file}" + held)


# ---------------------------------------------------------------- pure transforms


def adjustment_lines(lines: DataFrame, ledger: DataFrame, *, computed_at: datetime | None = None) -> DataFrame:
    """gold.invoice_lines + gold.billing_exports -> the adjustment lines to add (invoice_lines schema).

    For each final base/usage line whose own key is in the ledger, `accounted` is its ledger
    amount plus every adjustment of it: those in the ledger and those already in `lines` but
    not exported yet (a run that crashed after writing them). A line whose amount differs
    from `accounted` gets one adjustment for the difference. Its key hashes the adjusted key,
    how many adjustments of it came before, and both amounts, so a rerun computes the same
    key, and a change back and forth (A -> B -> A -> B) still gets a fresh key each time."""
    key, adjusts = F.col("idempotency_key"), F.col("adjusts_key")
    exported = ledger.select("idempotency_key", "adjusts_key", F.col("amount").cast("decimal(38,6)").alias("amount"))
    not_exported_yet = (
        lines.filter(F.col("line_type") == ADJUSTMENT)
        .select("idempotency_key", "adjusts_key", F.col("amount").cast("decimal(38,6)").alias("amount"))
        .join(exported.select("idempotency_key"), on="idempotency_key", how="left_anti")
    )
    accounted = (
        exported.unionByName(not_exported_yet)
        .groupBy(F.coalesce(adjusts, key).alias("target"))
        .agg(F.sum("amount").cast("decimal(38,6)").alias("accounted"),
             F.count(adjusts).alias("prior_adjustments"),
             F.max(adjusts.isNull()).alias("original_exported"))
        .filter(F.col("original_exported"))
    )
    current = lines.filter((F.col("status") == FINAL) & (F.col("line_type") != ADJUSTMENT)
                           & F.col("amount").isNotNull())
    changed = (
        current.join(accounted, current["idempotency_key"] == accounted["target"], how="inner")
        .filter(F.col("amount").cast("decimal(38,6)") != F.col("accounted"))
    )
    now_amount = F.col("amount").cast("decimal(38,6)")
    what = F.when(F.col("line_type") == "usage", F.lit("usage")).otherwise(F.lit("amount"))
    reason = F.concat(what, F.lit(" changed after export: exported "), money_string("accounted", "currency"),
                      F.lit(" "), F.col("currency"), F.lit(", now "), money_string("amount", "currency"),
                      F.lit(" "), F.col("currency"))
    new_key = F.sha2(F.concat_ws("|", F.lit(ADJUSTMENT), F.col("target"), F.col("prior_adjustments").cast("string"),
                                 F.col("accounted").cast("string"), now_amount.cast("string")), 256)
    values = {
        "idempotency_key": new_key,
        "line_type": F.lit(ADJUSTMENT),
        "units": F.lit(None), "included": F.lit(None), "billable_units": F.lit(None),
        "amount": (now_amount - F.col("accounted")).cast("decimal(38,6)"),
        "status": F.lit(FINAL),
        "adjusts_key": F.col("target"),
        "reason": reason,
        "computed_at": F.lit(computed_at) if computed_at is not None else F.current_timestamp(),
    }
    schema = spec(LINES).struct_type()
    return changed.select(*[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in schema])


def pending_lines(lines: DataFrame, ledger: DataFrame) -> DataFrame:
    """Final lines (base, usage, adjustment) whose idempotency key is not in the ledger."""
    return (lines.filter(F.col("status") == FINAL)
            .join(ledger.select("idempotency_key"), on="idempotency_key", how="left_anti"))


def split_held_lines(pending: DataFrame, holds: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Pending lines -> (lines to export, lines held): an account in `holds` (account_id,
    hold_reason: an open fraud flag) keeps its lines back until the hold is lifted."""
    released = pending.join(holds.select("account_id"), on="account_id", how="left_anti")
    held = pending.join(holds, on="account_id", how="inner")
    return released, held


def export_summary(pending: DataFrame) -> DataFrame:
    """One row: export_id (from the sorted keys: the same pending set gives the same id),
    line and adjustment counts, the periods."""
    digest = F.sha2(F.concat_ws("\n", F.array_sort(F.collect_list("idempotency_key"))), 256)
    return pending.agg(
        F.concat(F.lit("exp-"), F.substring(digest, 1, 24)).alias("export_id"),
        F.count(F.lit(1)).alias("lines"),
        F.count(F.when(F.col("line_type") == ADJUSTMENT, 1)).alias("adjustments"),
        F.array_sort(F.collect_set("period")).alias("periods"),
    )


def ledger_rows(pending: DataFrame, *, export_id: str, provider_file: str, finance_file: str,
                staged_at: datetime) -> DataFrame:
    """Pending lines -> gold.billing_exports rows, state staged."""
    values = {
        "export_id": F.lit(export_id), "state": F.lit(STAGED),
        "provider_file": F.lit(provider_file), "finance_file": F.lit(finance_file),
        "staged_at": F.lit(staged_at), "delivered_at": F.lit(None),
    }
    return pending.select(*[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name)
                            for f in spec(LEDGER).struct_type()])


# ---------------------------------------------------------------- file formats (plain Python)

FINANCE_COLUMNS = ["export_id", "idempotency_key", "account_id", "period", "period_start", "period_end",
                   "line_type", "charge", "direction", "amount", "currency", "adjusts_key", "reason"]
# Cells a spreadsheet would read as a formula (CSV injection); tab and CR too (OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: str) -> str:
    """A cell a spreadsheet could run as a formula gets a leading single quote."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _minor_units(amount: Decimal, currency: str) -> int:
    scaled = amount.scaleb(minor_unit_digits(currency))
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} {currency} is not a whole number of minor units")
    return int(scaled)


def _money(amount: Decimal, currency: str) -> str:
    return str(amount.quantize(Decimal(1).scaleb(-minor_unit_digits(currency))))


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bounds(period: str) -> tuple[str, str]:
    _, start, end = period_bounds([period])[0]
    return _iso(start), _iso(end)


def _description(row: Row) -> str:
    if row["line_type"] == ADJUSTMENT:
        return f"Adjustment {row['charge']} {row['period']}: {row['reason']}"
    if row["line_type"] == "base":
        return f"Base fee {row['period']}"
    return f"Usage {row['charge']} {row['period']}"


def provider_record(row: Row) -> dict:
    """One ledger row -> one invoice-item call for the payment provider: amounts in minor
    units as decimal strings, the ledger key as the provider's idempotency key."""
    start, end = _bounds(row["period"])
    metadata = {k: row[k] for k in ("export_id", "period", "line_type", "charge", "adjusts_key", "reason")
                if row[k] is not None}
    return {
        "idempotency_key": row["idempotency_key"],
        "customer": row["account_id"],
        "period": {"start": start, "end": end},
        "description": _description(row),
        "quantity": 1,
        "unit_amount_decimal": str(_minor_units(row["amount"], row["currency"])),
        "currency": row["currency"].lower(),
        "metadata": metadata,
    }


def finance_cells(row: Row) -> list[str]:
    """One ledger row -> one CSV row. The amount is unsigned, the sign is the direction
    column (charge or credit), so no amount cell ever starts with '-'; every cell that
    starts like a formula is neutralised."""
    start, end = _bounds(row["period"])
    amount: Decimal = row["amount"]
    cells = {
        **{k: row[k] for k in ("export_id", "idempotency_key", "account_id", "period", "line_type", "charge",
                               "currency", "adjusts_key", "reason")},
        "period_start": start, "period_end": end,
        "direction": "credit" if amount < 0 else "charge",
        "amount": _money(abs(amount), row["currency"]),
    }
    return [neutralise_cell("" if cells[c] is None else str(cells[c])) for c in FINANCE_COLUMNS]


@dataclass
class _Written:
    lines: int = 0
    adjustments: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)


def _write_files(rows: Iterable[Row], provider_file: Path, finance_file: Path) -> _Written:
    """Both files from the ledger rows of one export, in the order given (by key)."""
    provider_file.parent.mkdir(parents=True, exist_ok=True)
    stats = _Written()
    provider_tmp = provider_file.with_name(f".{provider_file.name}.tmp")
    with open(provider_tmp, "w", encoding="utf-8", newline="") as provider, \
            open(finance_file.with_name(f".{finance_file.name}.tmp"), "w", encoding="utf-8", newline="") as finance:
        writer = csv.writer(finance, lineterminator="\r\n")
        writer.writerow(FINANCE_COLUMNS)
        for row in rows:
            provider.write(json.dumps(provider_record(row), sort_keys=True, separators=(",", ":"),
                                      ensure_ascii=False) + "\n")
            writer.writerow(finance_cells(row))
            stats.lines += 1
            stats.adjustments += row["line_type"] == ADJUSTMENT
            stats.amounts[row["currency"]] = stats.amounts.get(row["currency"], Decimal(0)) + row["amount"]
        for out in (provider, finance):
            out.flush()
            os.fsync(out.fileno())
    # Each file appears whole or not at all; a crash between the two renames is repaired by
    # the rerun, which rewrites both with the same content.
    os.replace(provider_tmp, provider_file)
    os.replace(finance_file.with_name(f".{finance_file.name}.tmp"), finance_file)
    return stats


# ---------------------------------------------------------------- IO edge


def _mark_delivered(spark: SparkSession, lake: Lake, export_id: str, now: datetime) -> None:
    lake.delta(spark, LEDGER).update(
        condition=(F.col("export_id") == export_id) & (F.col("state") == STAGED),
        set={"state": F.lit(DELIVERED), "delivered_at": F.lit(now).cast("timestamp")},
    )


def _deliver(spark: SparkSession, lake: Lake, export_id: str, now: datetime) -> ExportResult:
    """Write the files of a staged export from its ledger rows, then mark it delivered."""
    # The IO edge: one export's ledger rows (invoice lines, not events: thousands, not
    # billions) stream to the driver from one sorted partition, in key order, into the files.
    rows = (lake.read(spark, LEDGER).filter(F.col("export_id") == export_id)
            .coalesce(1).sortWithinPartitions("idempotency_key").toLocalIterator())
    head = next(rows)
    provider_file, finance_file = Path(head["provider_file"]), Path(head["finance_file"])
    stats = _write_files(itertools.chain([head], rows), provider_file, finance_file)
    _mark_delivered(spark, lake, export_id, now)
    amounts = {c: Decimal(_money(a, c)) for c, a in stats.amounts.items()}
    return ExportResult(export_id, stats.lines, provider_file, finance_file, amounts, stats.adjustments)


def _stage(spark: SparkSession, lake: Lake, staged: DataFrame) -> None:
    cols = spec(LEDGER).column_names
    (lake.delta(spark, LEDGER).alias("t")
     .merge(staged.alias("s"), "t.idempotency_key = s.idempotency_key")
     .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
     .execute())


def _insert_adjustments(spark: SparkSession, lake: Lake, adjustments: DataFrame) -> None:
    cols = spec(LINES).column_names
    (lake.delta(spark, LINES).alias("t")
     .merge(adjustments.alias("s"), "t.idempotency_key = s.idempotency_key")
     .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
     .execute())


def run_export(spark: SparkSession, lake: Lake, *, exports_dir: Path, period: str | None = None,
               now: datetime | None = None) -> ExportResult:
    """Export the final lines not exported yet (all periods, or `period` only). Returns
    export_id None when there was nothing new; `resumed` names crashed exports finished first.
    Raises ExportRefused (writing nothing) when the gate fails."""
    period = parse_period(period)
    now = now or datetime.now(UTC)
    exports_dir = Path(exports_dir).expanduser().resolve()
    for name in (LINES, LEDGER):
        lake.ensure(spark, name)

    staged_ids = sorted(r["export_id"] for r in lake.read(spark, LEDGER).filter(F.col("state") == STAGED)
                        .select("export_id").distinct().collect())
    resumed = tuple(_deliver(spark, lake, export_id, now).export_id for export_id in staged_ids)

    lines = lake.read(spark, LINES)
    if period is not None:
        lines = lines.filter(F.col("period") == period)
    ledger = lake.read(spark, LEDGER)
    adjustments = adjustment_lines(lines, ledger, computed_at=now).localCheckpoint()
    from pipelines.fraud.flags import open_flag_holds

    pending, held_lines = split_held_lines(pending_lines(lines.unionByName(adjustments), ledger),
                                           open_flag_holds(spark, lake))
    pending = pending.localCheckpoint()
    # Bounded: one row per held account (flagged accounts are few).
    held = tuple(f"{r['account_id']}: {r['n']} line(s) ({r['hold_reason']})" for r in
                 held_lines.groupBy("account_id", "hold_reason").agg(F.count(F.lit(1)).alias("n"))
                 .orderBy("account_id").collect())
    summary = pending.transform(export_summary).first()
    if not summary["lines"]:
        return ExportResult(None, resumed=resumed, held=held)

    check_export_gate(spark, lake, list(summary["periods"]), now=now, extra_lines=adjustments)

    if summary["adjustments"]:
        _insert_adjustments(spark, lake, adjustments)
    export_id = summary["export_id"]
    folder = exports_dir / export_id
    _stage(spark, lake, ledger_rows(pending, export_id=export_id, provider_file=str(folder / PROVIDER_FILE),
                                    finance_file=str(folder / FINANCE_FILE), staged_at=now))
    result = _deliver(spark, lake, export_id, now)
    return ExportResult(result.export_id, result.lines, result.provider_file, result.finance_file,
                        result.amounts, result.adjustments, resumed, held)

