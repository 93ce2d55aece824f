"""Billing exports, exactly once: gold.invoice_lines -> files for the payment provider and
for finance, recorded in the ledger gold.billing_exports.

One run (`run_export`):

1. finish every export whose ledger rows are still `staged` (a crashed run): rewrite its
   files from its ledger rows alone, in idempotency-key order, then mark it delivered with
   the SHA-256 of each file;
2. verify every delivered export: each file must exist, be a regular file and have the
   SHA-256 its ledger rows record; a file missing or altered is reported (the
   result's `repaired`) and both files are rebuilt from the ledger rows (the ledger is the
   truth), then verified again (ExportIntegrityError when they still differ);
3. compute adjustment lines: a final line already exported whose current amount differs
   from what was accounted for it (its ledger row, the adjustments of it in the ledger and
   the adjustments of it already written to gold.invoice_lines) gets one line for the
   difference, never the full amount again;
4. pending = final lines (adjustments included) whose key is not in the ledger, minus the
   lines of accounts with an open fraud flag (held, reported, exported once cleared);
   nothing pending -> nothing to do;
5. the gate (pipelines.billing.gate) over the pending lines' periods: refuses with
   ExportRefused before anything is written;
6. write the new adjustment lines to gold.invoice_lines (insert if absent, by key);
7. stage: MERGE the pending lines into the ledger as `staged` under one export_id derived
   from their keys (insert if absent, so a rerun cannot stage a key twice);
8. write provider.jsonl and finance.csv from the staged ledger rows, then mark the export
   `delivered` with both files' SHA-256 (one Delta commit).

Files are written durably and privately: an exclusive temporary file under a random name in
the target folder (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, so a planted symlink is never
followed), flushed and fsynced, renamed over the final name, then the folder itself is
fsynced so the rename survives a power loss; the export folder is created 0700.

A crash anywhere leaves either nothing staged (the rerun recomputes the same pending set,
the same adjustment keys and the same export_id) or a staged export (the rerun finishes it
from the ledger, so its files come out byte for byte the same). Every Delta write is a
single atomic commit, so "in the middle of a ledger write" is either before or after it.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import itertools
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.gate import ExportRefused, check_export_gate, period_bounds
from pipelines.billing.periods import parse_period
from pipelines.core.money import minor_unit_digits, money_string
from pipelines.core.tables import BILLING_EXPORTS, FRAUD_FLAGS, INVOICE_LINES, Lake, _sql_string, spec

__all__ = ["ExportRefused", "ExportIntegrityError", "ExportResult", "adjustment_lines", "pending_lines",
           "run_export", "provider_record", "finance_cells", "neutralise_cell", "FINANCE_COLUMNS",
           "file_problem", "sha256_file"]

log = logging.getLogger(__name__)

STAGED = "staged"
DELIVERED = "delivered"
FINAL = "final"
ADJUSTMENT = "adjustment"
PROVIDER_FILE = "provider.jsonl"
FINANCE_FILE = "finance.csv"
FILE_MODE = 0o600  # export files: owner read/write only
DIR_MODE = 0o700  # export folders, when this code creates them


class ExportIntegrityError(RuntimeError):
    """A delivered export's files could not be made to match the SHA-256 its ledger rows
    record, even after rebuilding them from those rows (or its folder is not a directory)."""


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
    # Delivered exports whose files were missing or altered, found by this run's check
    # against the ledger hashes and rebuilt from the ledger rows, one text per export.
    repaired: tuple[str, ...] = ()

    def render(self) -> str:
        """One line for the run summary."""
        done = f"export: finished crashed export(s) {', '.join(self.resumed)}; " if self.resumed else "export: "
        held = f"; held: {'; '.join(self.held)}" if self.held else ""
        held += f"; REPAIRED delivered export(s): {'; '.join(self.repaired)}" if self.repaired else ""
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
    schema = spec(INVOICE_LINES).struct_type()
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
        # known once the files are written: set with state delivered
        "provider_sha256": F.lit(None), "finance_sha256": F.lit(None),
    }
    return pending.select(*[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name)
                            for f in spec(BILLING_EXPORTS).struct_type()])


# ---------------------------------------------------------------- file formats (plain Python)

FINANCE_COLUMNS = ["export_id", "idempotency_key", "account_id", "period", "period_start", "period_end",
                   "line_type", "charge", "direction", "amount", "currency", "adjusts_key", "reason"]
# Columns the exporter renders itself from typed values, never from input text: `amount` is an
# unsigned decimal string (the sign is `direction`), so it stays a plain number for finance.
_RENDERED = frozenset({"amount"})
# CSV injection (OWASP): a cell, or a piece of it after a list separator (`,` or `;`: the
# separator a spreadsheet may use when it splits the file itself), runs as a formula when its
# first character after any leading whitespace or quote characters is = + - @, or when it
# starts with a tab or carriage return.
_LIST_SEPARATOR = re.compile(r"([,;])")
_FORMULA_START = re.compile(r"[\t\r]|[ \t\r\n'\"]*[=+\-@]")


def neutralise_cell(value: str) -> str:
    """A cell a spreadsheet could run as a formula gets a leading single quote, and so does
    each piece of it after a `,` or `;` that could (`acct;=1+1` -> `acct;'=1+1`,
    ` =1` -> `' =1`). Other text is unchanged."""
    pieces = _LIST_SEPARATOR.split(value)
    return "".join("'" + p if i % 2 == 0 and _FORMULA_START.match(p) else p for i, p in enumerate(pieces))


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
    column (charge or credit), so the amount cell is always a plain decimal number and is
    written as it is; every other cell is text and is neutralised (neutralise_cell). The
    writer quotes every cell (csv.QUOTE_ALL), so no separator inside a cell splits it."""
    start, end = _bounds(row["period"])
    amount: Decimal = row["amount"]
    cells = {
        **{k: row[k] for k in ("export_id", "idempotency_key", "account_id", "period", "line_type", "charge",
                               "currency", "adjusts_key", "reason")},
        "period_start": start, "period_end": end,
        "direction": "credit" if amount < 0 else "charge",
        "amount": _money(abs(amount), row["currency"]),
    }
    return [("" if cells[c] is None else str(cells[c])) if c in _RENDERED
            else neutralise_cell("" if cells[c] is None else str(cells[c])) for c in FINANCE_COLUMNS]


# ---------------------------------------------------------------- durable, private files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# fsync(2) of a directory on a file system that cannot sync one (some FUSE mounts of object
# storage, where a rename is durable when it returns): warned about, not fatal.
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file or folder) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _CANNOT_SYNC:
            raise
        log.warning("cannot fsync directory %s on this file system (%s); its renames are as durable as "
                    "the file system makes them", path, exc)
    finally:
        os.close(fd)


def _export_folder(folder: Path) -> None:
    """Create the export folder (mode 0700) if needed, durably; refuse anything at its path
    that is not a real directory (a planted symlink would redirect the files)."""
    if not folder.parent.is_dir():
        folder.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fsync_dir(folder.parent.parent)
    try:
        os.mkdir(folder, DIR_MODE)
        created = True
    except FileExistsError:
        created = False
    if not stat.S_ISDIR(os.lstat(folder).st_mode):
        raise ExportIntegrityError(f"{folder} is not a directory (a symlink or a file is at the export's path); "
                                   "refusing to write export files through it")
    if created:
        fsync_dir(folder.parent)


def _remove_stale_temporaries(folder: Path, names: Iterable[str]) -> None:
    """Temporary files a killed run left behind (unlink never follows a symlink)."""
    prefixes = tuple(f".{name}." for name in names)
    with os.scandir(folder) as entries:
        for entry in entries:
            if (entry.name.startswith(prefixes) and entry.name.endswith(".tmp")
                    and not entry.is_dir(follow_symlinks=False)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _private_temporary(final: Path) -> tuple[int, Path]:
    """A new file next to `final` under a random name, created exclusively with mode 0600
    (tempfile.mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW), so nothing already at a name, a
    planted symlink included, is ever opened or followed."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # 0600 whatever the umask
    except OSError as exc:  # a file system without POSIX modes (some FUSE mounts)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            os.close(fd)
            raise
    return fd, Path(name)


def file_problem(path: Path, sha256: str | None) -> str | None:
    """None when `path` is a regular file whose SHA-256 is `sha256`; else what is wrong with
    it, in words. A null `sha256` (an export delivered before hashes were kept) is itself a
    problem: the file cannot be verified. (Modes are set when a file is created; they are
    not part of this check, which is about content.)"""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{path.name} is missing"
    if not stat.S_ISREG(info.st_mode):
        return f"{path.name} is not a regular file (a symlink?)"
    if sha256 is None:
        return f"{path.name} has no SHA-256 in the ledger (delivered before hashes were kept)"
    actual = sha256_file(path)
    if actual != sha256:
        return f"{path.name} was altered (SHA-256 {actual}, ledger {sha256})"
    return None


@dataclass
class _Written:
    lines: int = 0
    adjustments: int = 0
    amounts: dict[str, Decimal] = field(default_factory=dict)
    provider_sha256: str | None = None
    finance_sha256: str | None = None


def _write_files(rows: Iterable[Row], provider_file: Path, finance_file: Path) -> _Written:
    """Both files from the ledger rows of one export, in the order given (by key): each into
    a private temporary file, flushed and fsynced, hashed, renamed over its final name; then
    the folder is fsynced so both renames are durable."""
    folders = sorted({provider_file.parent, finance_file.parent})
    for folder in folders:
        _export_folder(folder)
        _remove_stale_temporaries(folder, (provider_file.name, finance_file.name))
    stats = _Written()
    temporaries: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            outs = []
            for final in (provider_file, finance_file):
                fd, tmp = _private_temporary(final)
                temporaries.append(tmp)
                outs.append(stack.enter_context(os.fdopen(fd, "w", encoding="utf-8", newline="")))
            provider, finance = outs
            writer = csv.writer(finance, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
            writer.writerow(FINANCE_COLUMNS)
            for row in rows:
                provider.write(json.dumps(provider_record(row), sort_keys=True, separators=(",", ":"),
                                          ensure_ascii=False) + "\n")
                writer.writerow(finance_cells(row))
                stats.lines += 1
                stats.adjustments += row["line_type"] == ADJUSTMENT
                stats.amounts[row["currency"]] = stats.amounts.get(row["currency"], Decimal(0)) + row["amount"]
            for out in outs:
                out.flush()
                os.fsync(out.fileno())
        provider_tmp, finance_tmp = temporaries
        stats.provider_sha256, stats.finance_sha256 = sha256_file(provider_tmp), sha256_file(finance_tmp)
        # Each file appears whole or not at all; a crash between the two renames is repaired
        # by the rerun, which rewrites both with the same content.
        os.replace(provider_tmp, provider_file)
        os.replace(finance_tmp, finance_file)
    finally:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    for folder in folders:
        fsync_dir(folder)
    return stats


# ---------------------------------------------------------------- IO edge


def _ensure_ledger_columns(spark: SparkSession, lake: Lake) -> None:
    """Add the ledger columns of the spec that an existing table lacks (a lake from before
    the files' SHA-256 were kept): nullable, so existing rows read null."""
    have = set(lake.read(spark, BILLING_EXPORTS).columns)
    missing = [c for c in spec(BILLING_EXPORTS).columns if c.name not in have]
    if missing:
        columns = ", ".join(f"`{c.name}` {c.type} COMMENT {_sql_string(c.comment)}" for c in missing)
        spark.sql(f"ALTER TABLE {lake.ref(BILLING_EXPORTS)} ADD COLUMNS ({columns})")


def _mark_delivered(spark: SparkSession, lake: Lake, export_id: str, now: datetime, written: _Written) -> None:
    lake.delta(spark, BILLING_EXPORTS).update(
        condition=(F.col("export_id") == export_id) & (F.col("state") == STAGED),
        set={"state": F.lit(DELIVERED), "delivered_at": F.lit(now).cast("timestamp"),
             "provider_sha256": F.lit(written.provider_sha256), "finance_sha256": F.lit(written.finance_sha256)},
    )


def _export_rows(spark: SparkSession, lake: Lake, export_id: str):
    # The IO edge: one export's ledger rows (invoice lines, not events: thousands, not
    # billions) stream to the driver from one sorted partition, in key order, into the files.
    return (lake.read(spark, BILLING_EXPORTS).filter(F.col("export_id") == export_id)
            .coalesce(1).sortWithinPartitions("idempotency_key").toLocalIterator())


def _deliver(spark: SparkSession, lake: Lake, export_id: str, now: datetime) -> ExportResult:
    """Write the files of a staged export from its ledger rows, then mark it delivered."""
    rows = _export_rows(spark, lake, export_id)
    head = next(rows)
    provider_file, finance_file = Path(head["provider_file"]), Path(head["finance_file"])
    stats = _write_files(itertools.chain([head], rows), provider_file, finance_file)
    _mark_delivered(spark, lake, export_id, now, stats)
    amounts = {c: Decimal(_money(a, c)) for c, a in stats.amounts.items()}
    return ExportResult(export_id, stats.lines, provider_file, finance_file, amounts, stats.adjustments)


def _problems(export: Row) -> list[str]:
    return [p for p in (file_problem(Path(export["provider_file"]), export["provider_sha256"]),
                        file_problem(Path(export["finance_file"]), export["finance_sha256"])) if p]


def _verify_delivered(spark: SparkSession, lake: Lake) -> tuple[str, ...]:
    """Check every delivered export's files against the ledger's SHA-256; rebuild the files
    of any export with a problem from its ledger rows, and check them again. Returns one
    text per repaired export; raises ExportIntegrityError when a rebuilt file still differs
    from the ledger."""
    # One row per delivered export (exports are few: one per run that had something new).
    exports = (lake.read(spark, BILLING_EXPORTS).filter(F.col("state") == DELIVERED)
               .groupBy("export_id")
               .agg(*[F.first(c, ignorenulls=True).alias(c)
                      for c in ("provider_file", "finance_file", "provider_sha256", "finance_sha256")])
               .orderBy("export_id").collect())
    repaired = []
    for export in exports:
        problems = _problems(export)
        if not problems:
            continue
        export_id = export["export_id"]
        log.warning("export %s: %s; rebuilding its files from the ledger", export_id, "; ".join(problems))
        written = _write_files(_export_rows(spark, lake, export_id), Path(export["provider_file"]),
                               Path(export["finance_file"]))
        if export["provider_sha256"] is None or export["finance_sha256"] is None:
            # Delivered before hashes were kept: the rebuilt files, made from the ledger
            # rows alone, are the reference from now on.
            lake.delta(spark, BILLING_EXPORTS).update(
                condition=(F.col("export_id") == export_id) & (F.col("state") == DELIVERED),
                set={"provider_sha256": F.lit(written.provider_sha256),
                     "finance_sha256": F.lit(written.finance_sha256)})
            export = Row(**{**export.asDict(), "provider_sha256": written.provider_sha256,
                            "finance_sha256": written.finance_sha256})
        still = _problems(export)
        if still:
            raise ExportIntegrityError(
                f"export {export_id}: files rebuilt from the ledger still do not match it: {'; '.join(still)}")
        repaired.append(f"{export_id}: {'; '.join(problems)}; rebuilt from the ledger, SHA-256 verified")
    return tuple(repaired)


def _stage(spark: SparkSession, lake: Lake, staged: DataFrame) -> None:
    cols = spec(BILLING_EXPORTS).column_names
    (lake.delta(spark, BILLING_EXPORTS).alias("t")
     .merge(staged.alias("s"), "t.idempotency_key = s.idempotency_key")
     .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
     .execute())


def _insert_adjustments(spark: SparkSession, lake: Lake, adjustments: DataFrame) -> None:
    cols = spec(INVOICE_LINES).column_names
    (lake.delta(spark, INVOICE_LINES).alias("t")
     .merge(adjustments.alias("s"), "t.idempotency_key = s.idempotency_key")
     .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
     .execute())


def open_flag_holds(spark: SparkSession, lake: Lake) -> DataFrame:
    """account_id, hold_reason for every account with an open fraud flag (gold.fraud_flags,
    written by pipelines/fraud/flags.py): the export holds their lines until it is cleared."""
    lake.ensure(spark, FRAUD_FLAGS)
    return (lake.read(spark, FRAUD_FLAGS).filter(F.col("state") == "open").groupBy("account_id")
            .agg(F.concat(F.lit("open fraud flag: "), F.concat_ws(", ", F.array_sort(F.collect_set("rule"))))
                 .alias("hold_reason")))


def run_export(spark: SparkSession, lake: Lake, *, exports_dir: Path, period: str | None = None,
               now: datetime | None = None) -> ExportResult:
    """Export the final lines not exported yet (all periods, or `period` only). Returns
    export_id None when there was nothing new; `resumed` names crashed exports finished first,
    `repaired` the delivered exports whose files were missing or altered and were rebuilt.
    Raises ExportRefused (writing nothing new) when the gate fails, ExportIntegrityError when
    a delivered export's files cannot be rebuilt to match the ledger."""
    period = parse_period(period)
    now = now or datetime.now(UTC)
    exports_dir = Path(exports_dir).expanduser().resolve()
    for name in (INVOICE_LINES, BILLING_EXPORTS):
        lake.ensure(spark, name)
    _ensure_ledger_columns(spark, lake)

    staged_ids = sorted(r["export_id"] for r in lake.read(spark, BILLING_EXPORTS).filter(F.col("state") == STAGED)
                        .select("export_id").distinct().collect())
    resumed = tuple(_deliver(spark, lake, export_id, now).export_id for export_id in staged_ids)
    repaired = _verify_delivered(spark, lake)

    lines = lake.read(spark, INVOICE_LINES)
    if period is not None:
        lines = lines.filter(F.col("period") == period)
    ledger = lake.read(spark, BILLING_EXPORTS)
    adjustments = adjustment_lines(lines, ledger, computed_at=now).localCheckpoint()
    pending, held_lines = split_held_lines(pending_lines(lines.unionByName(adjustments), ledger),
                                           open_flag_holds(spark, lake))
    pending = pending.localCheckpoint()
    # Bounded: one row per held account (flagged accounts are few).
    held = tuple(f"{r['account_id']}: {r['n']} line(s) ({r['hold_reason']})" for r in
                 held_lines.groupBy("account_id", "hold_reason").agg(F.count(F.lit(1)).alias("n"))
                 .orderBy("account_id").collect())
    summary = pending.transform(export_summary).first()
    if not summary["lines"]:
        return ExportResult(None, resumed=resumed, held=held, repaired=repaired)

    check_export_gate(spark, lake, list(summary["periods"]), now=now, extra_lines=adjustments)

    if summary["adjustments"]:
        _insert_adjustments(spark, lake, adjustments)
    export_id = summary["export_id"]
    folder = exports_dir / export_id
    _stage(spark, lake, ledger_rows(pending, export_id=export_id, provider_file=str(folder / PROVIDER_FILE),
                                    finance_file=str(folder / FINANCE_FILE), staged_at=now))
    result = _deliver(spark, lake, export_id, now)
    return ExportResult(result.export_id, result.lines, result.provider_file, result.finance_file,
                        result.amounts, result.adjustments, resumed, held, repaired)
