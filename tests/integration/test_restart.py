"""Stopping and crashing the pipeline never changes what it produces.

The interrupted run is stopped between micro-batches, crashed in the middle of a
micro-batch (after some of its writes committed), restarted from its checkpoints, fed
more records and run to the end. Its tables must equal, row for row, those of one
uninterrupted run over the same Kafka records.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from devtools import generator, sender
from pipelines.core.context import JobContext
from pipelines.core.tables import Lake
from pipelines.ingest import dedup as D
from pipelines.ingest import silver
from pipelines.ingest.silver_plan import rule_state_of
from tests.integration.helpers import context, run

pytestmark = pytest.mark.kafka

# Columns that record wall-clock time, or which of several byte-identical copies stands
# for an event, kept or dropped by a rule (the hot path keeps whichever its shuffle meets
# first inside one micro-batch).
VOLATILE = {"ingested_at", "last_ingested_at", "processed_at"}
COPY_COORDINATES = {"kafka_partition", "kafka_offset", "kafka_timestamp"}
COMPARED = {
    "bronze.events": VOLATILE,
    "silver.usage_events": VOLATILE | COPY_COORDINATES,
    "silver.account_events": VOLATILE | COPY_COORDINATES,
    "silver.duplicates": VOLATILE | COPY_COORDINATES,
    "silver.quarantine": VOLATILE,
    "gold.daily_usage": VOLATILE,
}


def folded_state(state, rules) -> list[tuple]:
    """Each rule key's state as the fold of its rows makes it (which events, not which
    copies: the anchor's coordinates may be any of its byte-identical copies)."""
    folded = state.transform(D.rule_state_events(rules)).select(
        "_rule", "account_id", "dedup_key", "_period", "event_id", "occurred_at", "_last.occurred_at")
    return sorted((tuple(r) for r in folded.collect()), key=repr)


def snapshot(spark, settings) -> dict[str, list[tuple]]:
    lake = Lake(settings)
    out = {}
    for table, skip in COMPARED.items():
        df = lake.read(spark, table)
        cols = [c for c in df.columns if c not in skip]
        out[table] = sorted((tuple(r) for r in df.select(*cols).collect()), key=repr)
    # The rules' state as the batches built it, and as the final silver tables make it:
    # whatever the cuts, crashes and replays, the two must agree.
    rules = JobContext.from_settings(settings).rules
    out["rule_state"] = folded_state(lake.read(spark, silver.RULE_STATE), rules)
    out["rule_state from silver"] = folded_state(rule_state_of(lambda t: lake.read(spark, t), rules), rules)
    return out


class Crash(RuntimeError):
    pass


def test_restarts_produce_the_same_tables_as_an_uninterrupted_run(spark, kafka_settings, topic, tmp_path, monkeypatch):
    clock = datetime(2026, 10, 15, tzinfo=timezone.utc)
    records = list(generator.generate(generator.GeneratorOptions(
        count=500, accounts=6, seed=11, start=clock - timedelta(days=20), span=timedelta(days=20), now=clock,
        duplicates=0.1, gateway_retries=0.08, reopened_tickets=0.08, late=0.05, bad=0.03)))
    first, second = records[:280], records[280:]
    base = kafka_settings.with_overrides(events_topic=topic)
    sender.send(first, base)

    # --- interrupted run --------------------------------------------------------------
    a = base.with_overrides(lake_root=str(tmp_path / "interrupted"))
    one_file = context(a, watermark_seconds=1, max_offsets_per_trigger=140, max_files_per_trigger=1)
    ctx = context(a, watermark_seconds=1, max_offsets_per_trigger=250, max_files_per_trigger=3)
    run(spark, one_file, "bronze")

    # 1. Stopped between micro-batches: silver commits its first batch, then is stopped.
    query = silver.start(spark, one_file)
    deadline = time.monotonic() + 300
    while (query.lastProgress or {}).get("batchId", -1) < 0 and time.monotonic() < deadline:
        assert query.exception() is None
        time.sleep(0.1)
    query.stop()

    # 2. Crashed in the middle of a batch: the usage write dies while the batch's other appends
    #    (on their own threads) commit or not.
    write_usage = silver.SilverBatchWriter._write_usage

    def crash_in_write(self, spark_, *args):
        monkeypatch.setattr(silver.SilverBatchWriter, "_write_usage", write_usage)
        raise Crash("injected crash between two writes of one micro-batch")

    monkeypatch.setattr(silver.SilverBatchWriter, "_write_usage", crash_in_write)
    with pytest.raises(Exception, match="injected crash between two writes"):
        run(spark, ctx, "silver")

    # 3. Crashed after all of a batch's writes, before its checkpoint commit: replayed.
    call = silver.SilverBatchWriter.__call__

    def crash_after_writes(self, batch_df, batch_id):
        call(self, batch_df, batch_id)
        monkeypatch.setattr(silver.SilverBatchWriter, "__call__", call)
        raise Crash("injected crash after the writes of a micro-batch")

    monkeypatch.setattr(silver.SilverBatchWriter, "__call__", crash_after_writes)
    with pytest.raises(Exception, match="injected crash after the writes"):
        run(spark, ctx, "silver", "gold")
    monkeypatch.setattr(silver.SilverBatchWriter, "__call__", call)

    run(spark, ctx, "silver", "gold")       # restart from the checkpoints
    sender.send(second, base)              # more records arrive
    run(spark, ctx, "bronze", "silver", "gold")
    interrupted = snapshot(spark, a)

    # --- uninterrupted run over the same records --------------------------------------
    b = base.with_overrides(lake_root=str(tmp_path / "uninterrupted"))
    run(spark, context(b, watermark_seconds=1), "bronze", "silver", "gold")
    uninterrupted = snapshot(spark, b)

    assert len(interrupted["bronze.events"]) == len(records)
    assert interrupted["silver.usage_events"], "the generated stream must produce billable usage"
    assert interrupted["silver.duplicates"], "the generated stream must exercise the dedup rules"
    for table in COMPARED:
        assert interrupted[table] == uninterrupted[table], table
    assert interrupted["rule_state"], "the generated stream must give the rules state"
    for state in ("rule_state", "rule_state from silver"):
        assert interrupted[state] == uninterrupted[state], state
    assert interrupted["rule_state"] == interrupted["rule_state from silver"]


def test_a_replayed_batch_appends_only_what_its_crashed_attempt_did_not(spark, tmp_path):
    """Steady-state appends carry no transaction id (BatchWrite): the first batch a run
    meets may be a replay and adds only the rows its offset ranges do not hold yet."""
    from pyspark.sql import functions as F

    from pipelines.core.context import JobContext
    from pipelines.core.settings import Settings
    from pipelines.core.tables import spec

    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    for table in (silver.QUARANTINE, silver.BATCHES):
        ctx.lake.ensure(spark, table)
    types = {c.name: c.type for c in spec(silver.QUARANTINE).columns}

    def rows(offsets, topic="t"):
        df = spark.createDataFrame([(topic, p, o) for p, o in offsets],
                                   "kafka_topic string, kafka_partition int, kafka_offset bigint")
        return df.withColumns({c: F.lit(None).cast(t) for c, t in types.items() if c not in df.columns})

    def stored():
        return sorted(tuple(r) for r in ctx.lake.read(spark, silver.QUARANTINE)
                      .select(*silver.COORDINATES).collect())

    writer = silver.SilverBatchWriter(ctx)
    earlier = [("t", 0, 0, 4)]                       # an earlier batch's range on partition 0
    writer._append(spark, rows([(0, 0), (0, 4)]), silver.QUARANTINE, (silver.BatchWrite("q", 0, may_replay=False), earlier))
    # The crashed attempt of batch 1 (ranges: partition 0 offsets 5-9, partition 1 offsets 0-3)
    # committed two of its three rows before it died.
    own = [("t", 0, 5, 9), ("t", 1, 0, 3)]
    batch = rows([(0, 5), (0, 9), (1, 2)])
    writer._append(spark, rows([(0, 5), (1, 2)]), silver.QUARANTINE, (silver.BatchWrite("q", 1, may_replay=False), own))
    # The replay, the first batch of the next run: only the missing row is added.
    writer._append(spark, batch, silver.QUARANTINE, (silver.BatchWrite("q", 1, may_replay=True), own))
    assert stored() == [("t", 0, 0), ("t", 0, 4), ("t", 0, 5), ("t", 0, 9), ("t", 1, 2)]
    # Replayed again: nothing.
    writer._append(spark, batch, silver.QUARANTINE, (silver.BatchWrite("q", 1, may_replay=True), own))
    assert len(stored()) == 5
    # A first attempt is a plain append: the same rows again would be doubled (which is why
    # only a run's first batch may skip the check, and why it must not be skipped there).
    writer._append(spark, rows([(0, 5)]), silver.QUARANTINE, (silver.BatchWrite("q", 1, may_replay=False), own))
    assert len(stored()) == 6

    # The batch record is keyed by (query_id, batch_id).
    counts = spark.createDataFrame(
        [(3, {"bad_json": 3}, 0, {}, 0, 0, 0, 0)],
        "rows_in long, quarantined map<string,bigint>, identity_duplicates long, rule_drops map<string,bigint>, "
        "rows_in_flagged long, kept_by_rules long, unruled long, account long")
    record = silver.SilverBatchWriter._batch_record("q", 1, counts)
    for _ in range(2):
        writer._append(spark, record, silver.BATCHES, (silver.BatchWrite("q", 1, may_replay=True), own))
    got = ctx.lake.read(spark, silver.BATCHES).collect()
    assert [(r.query_id, r.batch_id, r.rows_in, r.quarantined) for r in got] == [("q", 1, 3, {"bad_json": 3})]
