"""`lakehouse run plan-rules`: evaluate the plan rules, record decisions, emit applied ones.

One run, as of a time (default now, whole seconds):
1. reads silver (usage, lifecycle events), the pricing catalog and gold.fraud_flags (if the
   fraud monitors have created it), and computes candidates and decisions with the pure
   transforms of pipelines/rules/plan.py;
2. MERGEs them into gold.plan_decisions by decision_id (deterministic: account, rule, from
   and to plan, period). An applied decision is never rewritten; proposed and skipped
   ones follow the latest evaluation. A rerun with nothing new commits nothing;
3. stages one `plan.auto_changed` notification per applied decision in the outbox;
4. delivers each applied decision once as a plan.changed event (source plan-rules,
   event_id `plan-rules-<decision_id>`) to the events topic, where bronze and silver take
   it like any other plan change, then publishes the pending notifications. Both go
   through the outbox publisher of pipelines/rules/notifications.py: read back, transactional, marked.

Dry run (rules file or --dry-run): decisions are written as proposed; nothing is sent.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.billing.catalog import load_catalog, plans_frame, prices_frame
from pipelines.billing.periods import filter_plan_events, plan_changes, plan_segments, with_plan_rank
from pipelines.core.context import JobContext
from pipelines.core.exact_json import dumps
from pipelines.core.tables import ACCOUNT_EVENTS, FRAUD_FLAGS, PLAN_DECISIONS, USAGE_EVENTS, spec
from pipelines.rules import plan as R
from pipelines.rules.config import PlanRules, load_plan_rules
from pipelines.rules.notifications import (Outbox, notification_id_col, publish_outbox, publish_pending,
                                           stage_notifications)

NOTIFICATION_TYPE = "plan.auto_changed"
# What makes a re-evaluated decision different from the stored one. Not decided_at, nor
# effective_at (an upgrade's is its decided_at; a downgrade's is fixed by the period in
# decision_id): both follow the run's clock, so comparing them would rewrite every
# skipped or proposed row on every run. They say when the decision last changed.
_VALUES = ["metric", "evidence", "state", "reason", "event_id"]


@dataclass
class PlanRulesResult:
    as_of: datetime
    dry_run: bool
    decisions: list[dict] = field(default_factory=list)   # this run's decisions: rule, state, count
    events_sent: int = 0
    notifications_sent: int = 0

    def render(self) -> str:
        out = [f"plan-rules: as of {self.as_of:%Y-%m-%d %H:%M:%S} UTC{' (dry run)' if self.dry_run else ''}"]
        if not self.decisions:
            out.append("  no account qualifies for a plan change")
        for d in self.decisions:
            out.append(f"  {d['rule']:<15} {d['state']:<9} {d['decisions']:>6,}")
        out.append(f"  plan.changed events sent: {self.events_sent}; notifications sent: {self.notifications_sent}")
        return "\n".join(out)


def decisions_outbox(topic: str) -> Outbox:
    def render(r: dict) -> tuple[bytes, bytes]:
        event = {
            "event_id": r["event_id"], "event_type": "plan.changed", "account_id": r["account_id"],
            "occurred_at": r["occurred_at"], "schema_version": 1, "source": "plan-rules", "plan_id": r["to_plan"],
            "properties": {"previous_plan_id": r["from_plan"],
                           "direction": "upgrade" if r["rule"] == R.UPGRADE else "downgrade",
                           "initiated_by": "plan-rules", "rule": r["rule"], "decision_id": r["decision_id"]},
        }
        return r["account_id"].encode("utf-8"), dumps(event).encode("utf-8")

    return Outbox(
        table=PLAN_DECISIONS, topic=topic, id_column="event_id",
        pending=f"state = '{R.APPLIED}' AND published_at IS NULL", since_column="updated_at",
        select=(F.col("event_id"), F.col("decision_id"), F.col("account_id"), F.col("rule"), F.col("from_plan"),
                F.col("to_plan"), F.date_format("decided_at", "yyyy-MM-dd'T'HH:mm:ss.SSS'Z'").alias("occurred_at")),
        render=render,
    )


def compute_decisions(spark: SparkSession, ctx: JobContext, rules: PlanRules, as_of: datetime,
                      catalog_path: Path | None = None) -> DataFrame:
    """This evaluation's decisions (gold.plan_decisions columns but updated_at/published_at)."""
    lake = ctx.lake
    catalog = load_catalog(catalog_path)
    plans, prices = plans_frame(spark, catalog), prices_frame(spark, catalog).select("plan_id", "metric", "included")
    win = R.Evaluation.at(as_of)
    accounts = lake.read(spark, ACCOUNT_EVENTS)
    # The timeline as of the evaluation: a change after it is neither in force nor pending.
    changes = (
        accounts.filter(F.col("occurred_at") <= F.lit(win.as_of)).transform(filter_plan_events)
        .transform(with_plan_rank(plans)).transform(plan_changes)
    ).localCheckpoint()
    current = changes.transform(plan_segments).transform(R.plan_in_force(win.as_of))
    pending = changes.transform(R.pending_downgrades(win.as_of))
    moves = plans.transform(R.plan_moves(rules.exclusions.plans))
    usage = lake.read(spark, USAGE_EVENTS).select("account_id", "metric", "occurred_at", "quantity")
    candidates = (
        current.transform(R.upgrade_candidates(usage, prices, moves, rules.upgrade, win))
        .unionByName(current.transform(R.downgrade_candidates(usage, prices, moves, rules, win)))
    )
    if rules.exclusions.open_fraud_flags and lake.exists(spark, FRAUD_FLAGS):
        fraud = R.open_fraud_flags(lake.read(spark, FRAUD_FLAGS))
    else:
        fraud = spark.createDataFrame([], "account_id string, fraud_rule string")
    flagged = accounts.transform(R.flagged_accounts(rules.exclusions.account_flags))
    prior = lake.read(spark, PLAN_DECISIONS)
    return candidates.transform(R.decide(rules, win, prior=prior, flagged=flagged, fraud=fraud,
                                         pending=pending)).localCheckpoint()


def notifications_for(decisions: DataFrame) -> DataFrame:
    """Applied decisions -> one plan.auto_changed notification each (stage_notifications columns)."""
    payload = F.to_json(F.struct(
        "decision_id", "rule", "from_plan", "to_plan", "period",
        F.date_format("effective_at", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("effective_at"),
        "metric", F.parse_json("evidence").alias("evidence")))
    return decisions.filter(F.col("state") == R.APPLIED).select(
        notification_id_col(F.lit(NOTIFICATION_TYPE), F.col("account_id"), F.col("decision_id")).alias("notification_id"),
        F.lit(NOTIFICATION_TYPE).alias("type"), "account_id", F.col("decided_at").alias("occurred_at"),
        F.array("event_id").alias("trigger_event_ids"), payload.alias("payload"))


def run_plan_rules(spark: SparkSession, ctx: JobContext, *, now: datetime | None = None,
                   rules_path: Path | None = None, catalog_path: Path | None = None, dry_run: bool = False,
                   log: Callable[[str], None] | None = None) -> PlanRulesResult:
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    as_of = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    rules = load_plan_rules(rules_path)
    if dry_run:
        rules = replace(rules, dry_run=True)
    lake = ctx.lake
    for table in (USAGE_EVENTS, ACCOUNT_EVENTS, PLAN_DECISIONS):
        lake.ensure(spark, table)
    decisions = compute_decisions(spark, ctx, rules, as_of, catalog_path)

    stored = lake.read(spark, PLAN_DECISIONS)
    # Only new decisions and re-evaluated ones that are not applied yet and moved: a rerun
    # commits no table version, and an applied decision is history.
    same = [F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in ["decision_id", *_VALUES]]
    changed = (
        decisions.alias("s")
        .join(stored.alias("t"), on=same, how="left_anti")
        .join(stored.filter(F.col("state") == R.APPLIED).select("decision_id"), on="decision_id", how="left_anti")
    ).withColumns({"published_at": F.lit(None).cast("timestamp"), "updated_at": F.current_timestamp()}
                  ).select(*spec(PLAN_DECISIONS).column_names).localCheckpoint()
    if not changed.isEmpty():
        cols = [c for c in spec(PLAN_DECISIONS).column_names if c != "published_at"]
        (lake.delta(spark, PLAN_DECISIONS).alias("t").merge(changed.alias("s"), "t.decision_id = s.decision_id")
         .whenMatchedUpdate(condition=f"t.state <> '{R.APPLIED}'", set={c: f"s.{c}" for c in cols})
         .whenNotMatchedInsertAll()
         .execute())

    result = PlanRulesResult(as_of=as_of, dry_run=rules.dry_run)
    # Reporting: a handful of (rule, state) counts.
    result.decisions = [r.asDict() for r in decisions.groupBy("rule", "state")
                        .agg(F.count(F.lit(1)).alias("decisions")).orderBy("rule", "state").collect()]
    if not rules.dry_run:
        # From the table, not this run's frame: a run that crashed after its MERGE left
        # applied decisions whose notification or event is still owed.
        owed = lake.read(spark, PLAN_DECISIONS).filter(
            (F.col("state") == R.APPLIED) & ((F.col("period") == R.Evaluation.at(as_of).period) | F.col("published_at").isNull()))
        stage_notifications(spark, lake, notifications_for(owed))
        result.events_sent = publish_outbox(spark, lake, ctx.settings, decisions_outbox(ctx.settings.events_topic))
        result.notifications_sent = publish_pending(spark, lake, ctx.settings)
    decisions.unpersist()
    say(result.render())
    return result
