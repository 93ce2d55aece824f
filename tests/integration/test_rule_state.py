"""silver.rule_state on a real Delta lake: built once from the stored events, kept while the
rules stay the same, rebuilt when they change (the state is a fold under the rules)."""
from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from pipelines.core.context import JobContext
from pipelines.core.settings import Settings
from pipelines.ingest import dedup as D
from pipelines.ingest import silver
from pipelines.ingest.silver_plan import select_for
from tests.unit.test_silver_plan import _bronze, _sms, _ticket

AT = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)


def _write(spark, ctx, table, rows, **columns):
    from pyspark.sql import functions as F
    df = silver.silver_input(_bronze(spark, rows), ctx).withColumns({k: F.lit(v) for k, v in columns.items()})
    ctx.lake.ensure(spark, table)
    ctx.lake.save(select_for(df, table).write.format("delta").mode("append"), table)


def _state(spark, ctx):
    folded = ctx.lake.read(spark, silver.RULE_STATE).transform(D.rule_state_events(ctx.rules))
    return sorted(tuple(r) for r in folded.select("_rule", "dedup_key", "event_id", "_seq").collect())


def _version(spark, ctx) -> int:
    return ctx.lake.delta(spark, silver.RULE_STATE).history(1).first()["version"]


def test_the_rule_state_is_built_from_silver_once_and_rebuilt_when_the_rules_change(spark, tmp_path):
    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)))
    # Silver as a lake made before the state existed left it: a ticket kept in May and its
    # reopening dropped; an SMS kept, its retry dropped, and one 12 minutes later kept.
    _write(spark, ctx, silver.USAGE, [
        (0, 0, _ticket("t1", "2024-05-01T10:00:00Z"), AT),
        (0, 2, _sms("m1", "2024-05-10T10:00:00Z"), AT),
        (0, 4, _sms("m3", "2024-05-10T10:12:00Z"), AT),
    ])
    _write(spark, ctx, silver.DUPLICATES, [(0, 1, _ticket("t2", "2024-05-20T10:00:00Z"), AT)],
           rule="billable_tickets_monthly", duplicate_of="t1")
    _write(spark, ctx, silver.DUPLICATES, [(0, 3, _sms("m2", "2024-05-10T10:05:00Z"), AT)],
           rule="sms_gateway_retry", duplicate_of="m1")

    silver.ensure_rule_state(spark, ctx)

    assert _state(spark, ctx) == [("billable_tickets_monthly", "ticket-9", "t1", 1),
                                  ("sms_gateway_retry", "msg-1", "m3", 1)]
    built = _version(spark, ctx)
    silver.ensure_rule_state(spark, ctx)                  # same rules: nothing is rewritten
    assert _version(spark, ctx) == built

    # A wider retry window: the state is rebuilt (from the stored decisions).
    wider = tuple(dataclasses.replace(r, window=timedelta(minutes=30)) if r.window else r for r in ctx.rules)
    changed = dataclasses.replace(ctx, rules=wider)
    silver.ensure_rule_state(spark, changed)
    assert _version(spark, ctx) > built
    assert ctx.lake.properties(spark, silver.RULE_STATE)[silver.RULES_PROPERTY] == silver.rules_fingerprint(wider)
    assert _state(spark, changed) == _state(spark, ctx)
    assert silver.rules_fingerprint(wider) != silver.rules_fingerprint(ctx.rules)


def test_a_new_lake_gets_an_empty_state_for_its_rules_in_one_commit(spark, tmp_path):
    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)))

    silver.ensure_rule_state(spark, ctx)

    assert _version(spark, ctx) == 0
    assert ctx.lake.properties(spark, silver.RULE_STATE)[silver.RULES_PROPERTY] == silver.rules_fingerprint(ctx.rules)
    assert ctx.lake.read(spark, silver.RULE_STATE).count() == 0
