"""silver.rule_state on a real Delta lake: built once from the stored events, kept while the
rules stay the same, rebuilt when they change (the state is a fold under the rules)."""
from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.core import batch_expressions
from pipelines.core.context import JobContext
from pipelines.core.settings import Settings
from pipelines.ingest import dedup as D
from pipelines.ingest import silver, silver_plan
from pipelines.ingest.silver_plan import select_for
from tests.unit.test_silver_plan import _bronze, _sms, _ticket

AT = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
LATER = datetime(2024, 7, 4, 12, 0, tzinfo=UTC)   # ingested after every event below


@pytest.fixture(autouse=True)
def _stream_settings_put_back(spark):
    """A stream writer sets its batch's settings on the batch's session, which is the
    stream's own; these tests hand it frames of the shared session instead, so the settings
    are put back for the tests that follow."""
    keys = (batch_expressions.FACTORY_MODE, "spark.sql.optimizer.runtime.bloomFilter.enabled")
    before = {k: spark.conf.get(k) for k in keys}
    yield
    for k, v in before.items():
        spark.conf.set(k, v)


def _write(spark, ctx, table, rows, **columns):
    from pyspark.sql import functions as F
    df = silver.silver_input(_bronze(spark, rows), ctx).withColumns({k: F.lit(v) for k, v in columns.items()})
    ctx.lake.ensure(spark, table)
    ctx.lake.save(select_for(df, table).write.format("delta").mode("append"), table)


def _state(spark, ctx):
    folded = ctx.lake.read(spark, silver.RULE_STATE).transform(D.rule_state_events(ctx.rules))
    return sorted(tuple(r) for r in folded.select("_rule", "dedup_key", "event_id", "_seq").collect())


def _stream_writer(spark, tmp_path):
    """A lake with silver's tables, and the stream's writer of it."""
    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path)))
    silver.ensure_rule_state(spark, ctx)
    for table in silver.TABLES:
        ctx.lake.ensure(spark, table)
    return ctx, silver.SilverBatchWriter(ctx)


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


def test_the_stream_writer_s_copy_of_the_state_follows_its_own_appends_and_no_one_else_s(spark, tmp_path):
    """The stream writer decides from its own copy of silver.rule_state (silver.StateCopy).
    A commit by anyone else (here a backfill slice keeping a June ticket) must reach the
    next batch's decision: the copy is dropped and the table read again."""
    from tests.unit.test_silver_plan import _batch

    ctx, writer = _stream_writer(spark, tmp_path)

    def stream_batch(batch_id, rows):
        writer.write_batch(_batch(spark, ctx, rows), batch_id, "query-1")

    def decided(event_id):
        kept = ctx.lake.read(spark, silver.USAGE).filter(f"event_id = '{event_id}'").count()
        dropped = [tuple(r) for r in ctx.lake.read(spark, silver.DUPLICATES)
                   .filter(f"event_id = '{event_id}'").select("rule", "duplicate_of").collect()]
        return kept, dropped

    monthly = "billable_tickets_monthly"
    stream_batch(0, [(0, 0, _ticket("t1", "2024-05-01T10:00:00Z"), LATER)])
    assert writer._state is None                    # a run's first batch may be a replay: no copy
    stream_batch(1, [(0, 1, _ticket("t2", "2024-05-20T10:00:00Z"), LATER)])
    copy = writer._state
    assert copy is not None and copy.version == _version(spark, ctx)
    stream_batch(2, [(0, 2, _ticket("t3", "2024-06-03T10:00:00Z"), LATER)])      # June's first: kept
    assert writer._state.version == copy.version + 1 == _version(spark, ctx)  # grew by its own append
    assert decided("t2") == (0, [(monthly, "t1")]) and decided("t3") == (1, [])
    # The copy's rows come from plans that join the copy: carried over with their plans' size
    # estimate, the estimate squared every batch until planning ran out of memory (about 20
    # batches). Spark's default estimate (2**63 - 1) for the appended part, at most, is kept.
    estimate = writer._state.frame._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()
    assert estimate <= 2 * (2**63 - 1), estimate

    # A backfill slice (its own writer) keeps an earlier June ticket: June is re-anchored on it.
    backfill = silver.SilverBatchWriter(ctx, claims=False)
    backfill.write_batch(silver.silver_input(_bronze(spark, [(1, 0, _ticket("b1", "2024-06-01T10:00:00Z"), LATER)]), ctx),
                         0, "backfill-1")
    assert writer._state.version < _version(spark, ctx)

    # The stream's next June ticket is a duplicate of the backfilled one, as the table says.
    stream_batch(3, [(0, 3, _ticket("t4", "2024-06-20T10:00:00Z"), LATER)])
    assert decided("b1") == (1, [])
    assert decided("t4") == (0, [(monthly, "b1")])
    assert writer._state.version == _version(spark, ctx)


def test_an_appends_only_batch_is_counted_by_its_record_and_keeps_the_copy(spark, tmp_path, monkeypatch):
    """A batch with no identity lookup and no late rule event is written without counting it
    first (SilverPlan.appends_only). One whose tickets all come after their month's kept one
    changes no state: the copy stays, no table gets an empty commit, and its batch record
    still counts what the rule dropped."""
    from tests.unit.test_silver_plan import _batch

    ctx, writer = _stream_writer(spark, tmp_path)
    plans = []

    def spy(*args, **kwargs):
        plans.append(silver_plan.plan_batch(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(silver, "plan_batch", spy)
    at = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)    # ingested an hour or two after each event

    def versions():
        return {t: ctx.lake.delta(spark, t).history(1).first()["version"] for t in silver.TABLES}

    writer.write_batch(_batch(spark, ctx, [(0, 0, _ticket("t1", "2024-06-20T10:00:00Z"), at)]), 0, "query-1")
    writer.write_batch(_batch(spark, ctx, [(0, 1, _ticket("t2", "2024-06-20T10:30:00Z"), at)]), 1, "query-1")
    copy, before = writer._state, versions()
    assert copy is not None and copy.version == _version(spark, ctx)
    writer.write_batch(_batch(spark, ctx, [(0, 2, _ticket("t3", "2024-06-20T11:00:00Z"), at),
                                           (0, 3, b"{not json", at)]), 2, "query-1")

    assert [p.appends_only for p in plans] == [True, True, True]
    assert writer._state is copy                     # nothing appended to the state: the copy stands
    after = versions()
    # Each table the batch had rows for got one commit; usage_events and the rule state, none.
    assert {t for t in silver.TABLES if after[t] != before[t]} == {silver.DUPLICATES, silver.QUARANTINE, silver.BATCHES}
    assert all(after[t] - before[t] in (0, 1) for t in silver.TABLES)
    record = ctx.lake.read(spark, silver.BATCHES).filter("batch_id = 2").collect()
    assert [(r.rows_in, r.usage_events, r.identity_duplicates, r.rule_drops, sum(r.quarantined.values()))
            for r in record] == [(2, 0, 0, {"billable_tickets_monthly": 1}, 1)]


def test_the_copy_is_dropped_when_a_batch_fails(spark, tmp_path, monkeypatch):
    from tests.unit.test_silver_plan import _batch

    ctx, writer = _stream_writer(spark, tmp_path)
    for batch_id, day in ((0, "2024-05-01"), (1, "2024-06-01")):
        writer.write_batch(_batch(spark, ctx, [(0, batch_id, _ticket(f"t{batch_id}", f"{day}T10:00:00Z"), LATER)]),
                           batch_id, "query-1")
    assert writer._state is not None

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "_write_rule_state", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        writer.write_batch(_batch(spark, ctx, [(0, 2, _ticket("t2", "2024-07-03T10:00:00Z"), LATER)]), 2, "query-1")
    assert writer._state is None        # what the failed batch committed is unknown


def test_a_small_batch_writes_one_file_to_each_table_however_its_rows_are_partitioned(spark, tmp_path):
    """A batch under SMALL_BATCH_ROWS runs in one partition and appends one file per table:
    the stream's shuffle leaves its rows in several partitions, and a file per partition
    per table cost a task each and left small files for every later read."""
    from tests.unit.test_silver_plan import _batch

    ctx, writer = _stream_writer(spark, tmp_path)
    rows = []
    for i in range(6):
        rows.append((0, 3 * i, _sms(f"m{i}", f"2024-06-20T1{i}:00:00Z", key=f"msg-{i}"), LATER))
        # A copy of the same event with other bytes: kept out of usage as a conflicting copy.
        rows.append((0, 3 * i + 1, _sms(f"m{i}", f"2024-06-20T1{i}:01:00Z", key=f"msg-{i}"), LATER))
        rows.append((0, 3 * i + 2, b"{not json", LATER))
    batch = _batch(spark, ctx, rows).repartition(3)
    assert batch.rdd.getNumPartitions() == 3

    writer.write_batch(batch, 0, "query-1")

    # The batch's append to each table (with a file per partition, the quarantine's three
    # small files also set off an auto compaction: an OPTIMIZE commit after the write).
    written = {t: ctx.lake.delta(spark, t).history(5).filter("operation = 'WRITE'").first() for t in
               (silver.USAGE, silver.DUPLICATES, silver.QUARANTINE, silver.RULE_STATE, silver.BATCHES)}
    assert {t: c["operationMetrics"]["numFiles"] for t, c in written.items()} == dict.fromkeys(written, "1")
    assert {t: ctx.lake.read(spark, t).count() for t in written} == {
        silver.USAGE: 6, silver.DUPLICATES: 6, silver.QUARANTINE: 6, silver.RULE_STATE: 6, silver.BATCHES: 1}
