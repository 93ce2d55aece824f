"""gold.fraud_flags: the fraud job (rules -> flags, idempotent MERGE, one fraud.flagged
notification per new flag, staged by its deterministic id even when a run died between
recording the flag and staging it) and clearing a flag. The export holds the lines of accounts
with an open flag (pipelines/billing/export.py: open_flag_holds reads the table).

A flag's id is deterministic (pipelines/fraud/rules.py), so a rerun updates the evidence
of an open flag, inserts only flags never seen before, and leaves a cleared flag cleared:
the same evidence never reopens it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.tables import ACCOUNT_EVENTS, FRAUD_FLAGS, USAGE_EVENTS, Lake, spec
from pipelines.fraud.rules import FraudRules, fraud_candidates, load_fraud_rules
from pipelines.rules.notifications import notification_id_col, stage_notifications

OPEN, CLEARED = "open", "cleared"
NOTIFICATION_TYPE = "fraud.flagged"
MAX_LISTED = 200


class FraudError(ValueError):
    pass


@dataclass(frozen=True)
class FraudResult:
    candidates: int
    new_flags: int
    open_flags: int
    notifications: int | None   # fraud.flagged notifications staged (None: not counted)

    def render(self) -> str:
        sent = "" if self.notifications is None else f", {self.notifications} {NOTIFICATION_TYPE} notification(s) staged"
        return (f"fraud: {self.candidates} rule match(es), {self.new_flags} new flag(s), "
                f"{self.open_flags} open flag(s) in {FRAUD_FLAGS}{sent}")


def flag_rows(candidates: DataFrame) -> DataFrame:
    """Candidate flags -> gold.fraud_flags rows, open and never cleared."""
    values = {"state": F.lit(OPEN), "cleared_at": F.lit(None), "cleared_by": F.lit(None), "clear_reason": F.lit(None)}
    return candidates.select(*[values.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name)
                               for f in spec(FRAUD_FLAGS).struct_type()])


def notification_rows(flags: DataFrame) -> DataFrame:
    """Flags -> rows for pipelines.rules.notifications.stage_notifications (one per flag,
    its id fixed by the flag's)."""
    payload = F.concat(F.lit('{"flag_id":"'), F.col("flag_id"), F.lit('","rule":"'), F.col("rule"),
                       F.lit('","evidence":'), F.col("evidence"), F.lit("}"))
    return flags.select(
        notification_id_col(F.lit(NOTIFICATION_TYPE), F.col("account_id"), F.col("flag_id")).alias("notification_id"),
        F.lit(NOTIFICATION_TYPE).alias("type"), "account_id", F.col("last_seen").alias("occurred_at"),
        F.array().cast("array<string>").alias("trigger_event_ids"), payload.alias("payload"))


def _stage_notifications(spark: SparkSession, lake: Lake, flags: DataFrame) -> int:
    return stage_notifications(spark, lake, notification_rows(flags))


def run_fraud(spark: SparkSession, lake: Lake, *, rules: FraudRules | None = None,
              as_of: datetime | None = None) -> FraudResult:
    rules = rules or load_fraud_rules()
    as_of = as_of or datetime.now(UTC)
    for name in (USAGE_EVENTS, ACCOUNT_EVENTS, FRAUD_FLAGS):
        lake.ensure(spark, name)
    candidates = fraud_candidates(lake.read(spark, USAGE_EVENTS), lake.read(spark, ACCOUNT_EVENTS), rules, as_of).localCheckpoint()
    # Counted before the MERGE below records them: only the count is needed now that
    # notifications are staged for every candidate.
    new_count = candidates.join(lake.read(spark, FRAUD_FLAGS).select("flag_id"), on="flag_id", how="left_anti").count()
    cols = spec(FRAUD_FLAGS).column_names
    (lake.delta(spark, FRAUD_FLAGS).alias("t")
     .merge(flag_rows(candidates).alias("s"), "t.flag_id = s.flag_id")
     # open flags follow their evidence; cleared ones stay cleared
     .whenMatchedUpdate(condition=f"t.state = '{OPEN}'", set={
         "evidence": "s.evidence", "first_seen": "least(t.first_seen, s.first_seen)",
         "last_seen": "greatest(t.last_seen, s.last_seen)"})
     .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
     .execute())
    # Every candidate's notification, after its flag is recorded: ids already in the outbox
    # are skipped, so a run that died between the two still owes (and now stages) the
    # notifications of the flags it recorded, which are no longer new when it is rerun.
    notified = _stage_notifications(spark, lake, candidates)
    open_count = lake.read(spark, FRAUD_FLAGS).filter(F.col("state") == OPEN).count()
    return FraudResult(candidates.count(), new_count, open_count, notified)


def clear_flags(spark: SparkSession, lake: Lake, account_id: str, *, rule: str | None, by: str, reason: str,
                now: datetime | None = None) -> int:
    """Clear the account's open flags (of one rule, or all); FraudError when none is open."""
    for name, value in (("--by", by), ("--reason", reason)):
        if not value or not value.strip():
            raise FraudError(f"fraud clear: {name} must not be empty")
    lake.ensure(spark, FRAUD_FLAGS)
    match = (F.col("account_id") == account_id) & (F.col("state") == OPEN)
    if rule:
        match &= F.col("rule") == rule
    n = lake.read(spark, FRAUD_FLAGS).filter(match).count()
    if not n:
        raise FraudError(f"no open fraud flag for account {account_id!r}" + (f" and rule {rule!r}" if rule else ""))
    lake.delta(spark, FRAUD_FLAGS).update(condition=match, set={
        "state": F.lit(CLEARED), "cleared_at": F.lit(now or datetime.now(UTC)).cast("timestamp"),
        "cleared_by": F.lit(by), "clear_reason": F.lit(reason)})
    return n


def render_flags(spark: SparkSession, lake: Lake, *, include_cleared: bool = False) -> str:
    lake.ensure(spark, FRAUD_FLAGS)
    flags = lake.read(spark, FRAUD_FLAGS)
    if not include_cleared:
        flags = flags.filter(F.col("state") == OPEN)
    # Bounded driver read: flags are few; the listing says when it is cut.
    rows = flags.orderBy(F.col("first_seen").desc(), "account_id", "rule").limit(MAX_LISTED + 1).collect()
    if not rows:
        return "fraud: no " + ("" if include_cleared else "open ") + "flags"
    lines = [f"{'ACCOUNT_EVENTS':<20} {'RULE':<16} {'STATE':<8} {'FIRST SEEN (UTC)':<20} EVIDENCE"]
    for r in rows[:MAX_LISTED]:
        state = r["state"] + (f" by {r['cleared_by']}: {r['clear_reason']}" if r["state"] == CLEARED else "")
        lines.append(f"{r['account_id']:<20} {r['rule']:<16} {state:<8} {r['first_seen']:%Y-%m-%d %H:%M:%S}  "
                     f"{r['evidence']}")
    if len(rows) > MAX_LISTED:
        lines.append(f"... first {MAX_LISTED} shown; query gold.fraud_flags for the rest")
    return "\n".join(lines)


def run_fraud_job(spark: SparkSession, lake: Lake, say: Callable[[str], None]) -> FraudResult:
    result = run_fraud(spark, lake)
    say(result.render())
    return result
