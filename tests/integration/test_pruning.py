"""History reads prune silver's event_date partitions, and the outbox's staging its account
shards (DESIGN section 8: no micro-batch reads a whole table)."""
from __future__ import annotations

from datetime import date

import pytest
from pyspark.sql import functions as F

from pipelines.ingest import silver as S
from pipelines.ingest.silver_plan import stored_rows
from pipelines.core.context import JobContext
from pipelines.core.tables import filter_touched_partitions, spec


def _usage_rows(spark, n: int, days: int):
    types = {c.name: c.type for c in spec(S.USAGE).columns}
    df = spark.range(n).select(
        F.concat(F.lit("e"), F.col("id").cast("string")).alias("event_id"), F.lit("acct").alias("account_id"),
        F.lit("usage").alias("event_type"),
        F.date_add(F.lit(date(2026, 1, 1)), (F.col("id") % days).cast("int")).alias("event_date"),
        F.lit("t").alias("kafka_topic"), F.lit(0).alias("kafka_partition"), F.col("id").alias("kafka_offset"))
    return df.withColumns({c: F.lit(None).cast(t) for c, t in types.items() if c not in df.columns}).select(*types)


def test_a_history_read_touches_only_the_batch_dates(spark, tmp_path):
    from pipelines.core.settings import Settings

    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    ctx.lake.ensure(spark, S.USAGE)
    _usage_rows(spark, 300, 3).write.format("delta").mode("append").save(ctx.lake.path(S.USAGE))
    dates = spark.createDataFrame([(date(2026, 1, 2),)], "event_date date")
    # The batch's own rows, as the stream's batch names them: an offset range per partition.
    own = [("t", 0, 0, 9)]

    read = lambda table: ctx.lake.read(spark, table)  # noqa: E731
    got = stored_rows(read, S.USAGE, dates, own, claims=True)
    assert got.select("event_date").distinct().collect() == [(date(2026, 1, 2),)]
    # The date's 100 rows less the batch's own (offsets 0-9: 1, 4 and 7 fall on that date).
    assert got.count() == 97
    # Executed: the scan carries the broadcast dates as a run-time partition filter.
    plan = got._jdf.queryExecution().executedPlan().toString()
    # (The plan's text cuts long filter lists, so the expression is matched by its head.)
    assert "dynamicpruningexpression(" in plan and "SubqueryAdaptiveBroadcast dynamicpruning" in plan, plan

    # A span of dates the batch already knows (the rule scopes) prunes when planned.
    span = F.col("event_date").between(F.lit(date(2026, 1, 2)), F.lit(date(2026, 1, 3)))
    got = stored_rows(read, S.USAGE, span, own, claims=True)
    assert sorted(r[0] for r in got.select("event_date").distinct().collect()) == [date(2026, 1, 2), date(2026, 1, 3)]
    assert got.count() == 97 + 100 - 3     # offsets 2, 5 and 8 fall on 3 Jan
    scan = got._jdf.queryExecution().executedPlan().toString()
    partition_filters = scan.split("PartitionFilters: [")[1].split("]")[0]
    assert "2026-01-02" in partition_filters and "2026-01-03" in partition_filters, scan


def test_filter_touched_partitions_keeps_exactly_the_matching_rows(spark, tmp_path):
    path = str(tmp_path / "t")
    spark.createDataFrame([(date(2026, 1, d), f"a{d % 2}", d) for d in range(1, 7)],
                          "event_date date, account_id string, n int").write.format("delta").partitionBy(
        "event_date").save(path)
    keys = spark.createDataFrame([(date(2026, 1, 2), "a0"), (date(2026, 1, 3), "a0"), (None, "a1")],
                                 "event_date date, account_id string")
    got = spark.read.format("delta").load(path).transform(filter_touched_partitions(keys, ["event_date", "account_id"]))
    assert sorted(r.n for r in got.collect()) == [2]


def test_file_statistics_cover_the_lookup_columns_and_still_skip(spark, tmp_path):
    """Delta keeps statistics on the spec's stats_columns only (cheaper appends), and a
    lookup by Kafka coordinates (a replay's own rows) still reads only the file holding them."""
    import json
    from pipelines.core.settings import Settings

    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    ctx.lake.ensure(spark, S.USAGE)
    props = ctx.lake.properties(spark, S.USAGE)
    assert props["delta.dataSkippingStatsColumns"] == ",".join(spec(S.USAGE).stats_columns)
    assert props["delta.checkpointInterval"] == "100"
    rows = _usage_rows(spark, 300, 1).withColumns({"occurred_at": F.lit("2026-01-01 10:00:00").cast("timestamp"),
                                                   "ingested_at": F.lit("2026-01-01 10:00:05").cast("timestamp"),
                                                   "metric": F.lit("api_calls")})
    for low in (0, 100, 200):    # one file each, all on one date
        rows.filter(F.col("kafka_offset").between(low, low + 99)).coalesce(1).write.format("delta").mode(
            "append").save(ctx.lake.path(S.USAGE))

    log = sorted((tmp_path / "lake").rglob("_delta_log/*.json"))
    stats = [json.loads(json.loads(line)["add"]["stats"]) for f in log for line in f.read_text().splitlines()
             if '"add"' in line]
    assert len(stats) == 3
    for s in stats:
        assert set(s["minValues"]) == set(spec(S.USAGE).stats_columns)
        assert set(s["nullCount"]) == set(spec(S.USAGE).stats_columns)
        assert s["numRecords"] == 100

    files = ctx.lake.read(spark, S.USAGE).filter(F.col("kafka_offset").between(120, 130)).inputFiles()
    assert len(files) == 1
    assert ctx.lake.read(spark, S.USAGE).filter(F.col("kafka_offset").between(120, 130)).count() == 11


# --------------------------------------------------------------------------- the outbox


def _note(n: int, account: str) -> dict:
    from datetime import datetime

    from pipelines.rules.notifications import notification_id

    return {"notification_id": notification_id("test.note", account, f"k{n}"), "type": "test.note",
            "account_id": account, "occurred_at": datetime(2026, 1, 1, 0, 0, n % 60), "trigger_event_ids": [f"e{n}"],
            "payload": f'{{"n": {n}}}'}


def _shard(account: str) -> str:
    import hashlib

    return hashlib.sha256(account.encode("utf-8")).hexdigest()[0]


def test_an_accounts_outbox_shard_is_the_first_hex_digit_of_its_sha256(spark):
    from pipelines.rules.notifications import account_shard_col

    accounts = ["acct-1", "acct_ünï-名", "a" * 64, "0", None]
    got = spark.createDataFrame([(a,) for a in accounts], "account_id string").select(
        "account_id", account_shard_col("account_id").alias("shard")).collect()
    assert {r.account_id: r.shard for r in got} == {a: (_shard(a) if a is not None else None) for a in accounts}


def test_staging_reads_only_the_outbox_shards_of_its_accounts(spark, tmp_path):
    """A staging's MERGE looks its ids up in the shards of its rows' accounts only: a data
    file of another shard gone from disk does not stop it, while staging into that shard
    does read it (and fails on it)."""
    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake
    from pipelines.rules.notifications import stage_notifications, stage_rows

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    accounts = [f"acct-{i}" for i in range(60)]
    assert stage_notifications(spark, lake, stage_rows(spark, [_note(i, a) for i, a in enumerate(accounts)])) == 60
    detail = lake.delta(spark, "gold.notifications").detail().select("partitionColumns").first()[0]
    assert list(detail) == ["account_shard"]
    stored = {r.account_id: r.account_shard for r in lake.read(spark, "gold.notifications").collect()}
    assert stored == {a: _shard(a) for a in accounts}

    mine = "acct-0"
    other = next(a for a in accounts if _shard(a) != _shard(mine))
    for f in (tmp_path / "lake").rglob(f"account_shard={_shard(other)}/*.parquet"):
        f.unlink()
    # acct-0's own id again (not new) and a new one: only acct-0's shard is read.
    assert stage_notifications(spark, lake, stage_rows(spark, [_note(0, mine), _note(100, mine)])) == 1
    with pytest.raises(Exception, match="(?i)file.*(not exist|not found)|FileNotFound"):
        stage_notifications(spark, lake, stage_rows(spark, [_note(101, other)]))


def test_an_outbox_made_before_the_shards_is_rewritten_once_with_every_row_kept(spark, tmp_path):
    from datetime import datetime

    from delta.tables import DeltaTable

    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake, spec
    from pipelines.rules.notifications import stage_notifications, stage_rows, to_outbox_rows

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    old_columns = [c for c in spec("gold.notifications").columns if c.name != "account_shard"]
    builder = DeltaTable.create(spark).location(lake.path("gold.notifications")).property(
        "delta.checkpointInterval", "100")
    for c in old_columns:
        builder = builder.addColumn(c.name, c.type)
    builder.execute()
    published = datetime(2026, 1, 3, 4, 5, 6)
    old = (stage_rows(spark, [_note(1, "acct-a"), _note(2, "acct-b")]).transform(to_outbox_rows)
           .withColumn("published_at", F.when(F.col("account_id") == "acct-a", F.lit(published)))
           .select(*[c.name for c in old_columns]))
    old.write.format("delta").mode("append").save(lake.path("gold.notifications"))

    # acct-a's notification again (published before the layout) and a new one of acct-b.
    assert stage_notifications(spark, lake, stage_rows(spark, [_note(1, "acct-a"), _note(3, "acct-b")])) == 1
    detail = lake.delta(spark, "gold.notifications").detail().select("partitionColumns").first()[0]
    assert list(detail) == ["account_shard"]
    assert lake.properties(spark, "gold.notifications")["delta.checkpointInterval"] == "100"
    rows = {r.notification_id: r for r in lake.read(spark, "gold.notifications").collect()}
    assert sorted(rows) == sorted(_note(n, a)["notification_id"] for n, a in ((1, "acct-a"), (2, "acct-b"), (3, "acct-b")))
    assert rows[_note(1, "acct-a")["notification_id"]].published_at == published
    assert rows[_note(2, "acct-b")["notification_id"]].published_at is None
    assert {r.account_shard for r in rows.values() if r.account_id == "acct-b"} == {_shard("acct-b")}
    history = lake.delta(spark, "gold.notifications").history().select("operation").collect()
    # Created, the old rows, the rewrite, the staging: a second staging rewrites nothing.
    assert stage_notifications(spark, lake, stage_rows(spark, [_note(4, "acct-a")])) == 1
    again = lake.delta(spark, "gold.notifications").history().select("operation").collect()
    assert len(again) == len(history) + 1 and again[0].operation == "MERGE"


# --------------------------------------------------------------------------- gold.daily_usage


def _daily(spark, rows):
    return spark.createDataFrame(rows, "account_id string, product string, metric string, usage_date date, "
                                       "quantity decimal(38,6), event_count bigint, last_ingested_at timestamp")


def test_the_daily_usage_merge_reads_only_the_days_it_writes(spark, tmp_path):
    """gold.daily_usage is partitioned by day and its MERGE names the days it writes: a data
    file of another day gone from disk does not stop it, while writing that day does read it."""
    from datetime import datetime
    from decimal import Decimal

    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake
    from pipelines.ingest.gold import merge_daily_usage

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    at = datetime(2026, 1, 5, 12)
    first = _daily(spark, [("a", "p", "m", date(2026, 1, d), Decimal("1.5"), 1, at) for d in (1, 2, 3)]).localCheckpoint()
    merge_daily_usage(spark, lake, first)
    assert list(lake.delta(spark, "gold.daily_usage").detail().select("partitionColumns").first()[0]) == ["usage_date"]
    for f in (tmp_path / "lake").rglob("usage_date=2026-01-03/*.parquet"):
        f.unlink()
    # Day 1 moves, day 2's events are all gone (null totals: deleted), day 4 is new.
    again = _daily(spark, [("a", "p", "m", date(2026, 1, 1), Decimal("2.25"), 2, at),
                           ("a", "p", "m", date(2026, 1, 2), None, None, None),
                           ("a", "p", "m", date(2026, 1, 4), Decimal("0.000001"), 1, at)]).localCheckpoint()
    merge_daily_usage(spark, lake, again)
    got = {r.usage_date: (r.quantity, r.event_count) for r in
           lake.read(spark, "gold.daily_usage").filter(F.col("usage_date") != date(2026, 1, 3)).collect()}
    assert got == {date(2026, 1, 1): (Decimal("2.250000"), 2), date(2026, 1, 4): (Decimal("0.000001"), 1)}
    with pytest.raises(Exception, match="(?i)file.*(not exist|not found)|FileNotFound"):
        merge_daily_usage(spark, lake, _daily(spark, [("a", "p", "m", date(2026, 1, 3), Decimal("1"), 1, at)])
                          .localCheckpoint())


def test_a_daily_usage_table_made_before_its_partitions_is_rewritten_into_them(spark, tmp_path):
    from datetime import datetime
    from decimal import Decimal

    from delta.tables import DeltaTable

    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake, TableSpecError
    from pipelines.ingest.gold import merge_daily_usage

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    builder = DeltaTable.create(spark).location(lake.path("gold.daily_usage")).property("delta.checkpointInterval", "100")
    for c in spec("gold.daily_usage").columns:
        builder = builder.addColumn(c.name, c.type)
    builder.execute()
    at = datetime(2026, 1, 5, 12)
    _daily(spark, [("a", "p", "m", date(2026, 1, d), Decimal(d), d, at) for d in (1, 2)]).write.format("delta").mode(
        "append").save(lake.path("gold.daily_usage"))

    merge_daily_usage(spark, lake, _daily(spark, [("a", "p", "m", date(2026, 1, 2), Decimal("7"), 7, at)]).localCheckpoint())
    assert list(lake.delta(spark, "gold.daily_usage").detail().select("partitionColumns").first()[0]) == ["usage_date"]
    assert lake.properties(spark, "gold.daily_usage")["delta.checkpointInterval"] == "100"
    got = sorted((r.usage_date.day, r.quantity, r.event_count) for r in lake.read(spark, "gold.daily_usage").collect())
    assert got == [(1, Decimal("1.000000"), 1), (2, Decimal("7.000000"), 7)]

    # A table followed through its change feed is never rewritten behind its followers' back.
    followed = Lake(Settings().with_overrides(lake_root=str(tmp_path / "other")))
    builder = DeltaTable.create(spark).location(followed.path("silver.usage_events")).property(
        "delta.enableChangeDataFeed", "true")
    for c in spec("silver.usage_events").columns:
        builder = builder.addColumn(c.name, c.type)
    builder.execute()
    with pytest.raises(TableSpecError, match="change data feed is not rewritten"):
        followed.ensure_partitioned(spark, "silver.usage_events")


# --------------------------------------------------------------------------- the stream monitor


def _rows_of(spark, table: str, n: int, values: dict):
    """n rows of `table`'s columns: `values` (Columns over `id`) where given, nulls elsewhere."""
    types = {c.name: c.type for c in spec(table).columns}
    df = spark.range(n).withColumns(values)
    return df.select(*[F.col(c).cast(t) if c in values else F.lit(None).cast(t).alias(c) for c, t in types.items()])


@pytest.mark.parametrize("table, stream", [("bronze.events", "bronze"), ("silver.usage_events", "silver"),
                                           ("gold.daily_usage", "gold")])
def test_the_monitors_freshness_reads_only_what_was_written_since_it_last_looked(spark, tmp_path, table, stream):
    """The monitor's freshness aggregate reads the whole table once; after that only the
    files that can hold rows newer than the newest times it saw: a file written before,
    gone from disk, does not stop it, while a monitor that never looked fails on it. A late
    row (older event time, newer ingestion) moves the ingestion time only."""
    from datetime import datetime
    from pathlib import Path

    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake
    from pipelines.monitoring.listener import StreamMonitor

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    lake.ensure(spark, table)
    t1, t2 = datetime(2026, 3, 1, 10), datetime(2026, 3, 2, 11)
    ingest = "last_ingested_at" if table == "gold.daily_usage" else "ingested_at"
    event = {"bronze.events": "kafka_timestamp", "silver.usage_events": "occurred_at",
             "gold.daily_usage": "usage_date"}[table]

    def write(at: datetime, ingested: datetime | None = None) -> None:
        values = {ingest: F.lit(ingested or at), event: F.lit(at if event != "usage_date" else at.date()),
                  "account_id": F.concat(F.lit("a"), F.col("id").cast("string")), "event_id": F.col("id").cast("string")}
        if table == "silver.usage_events":
            values["event_date"] = F.lit(at.date())
        values = {c: v for c, v in values.items() if c in spec(table).column_names}
        lake.save(_rows_of(spark, table, 5, values).coalesce(1).write.format("delta").mode("append"), table)

    write(t1)
    monitor = StreamMonitor(spark, lake, continuous=True)
    expected_event = (lambda at: at.replace(hour=0) if event == "usage_date" else at)
    assert monitor._freshness({stream})[stream] == (expected_event(t1), t1)
    first_files = set(lake.read(spark, table).inputFiles())
    write(t2)
    for f in first_files:
        Path(f.removeprefix("file:")).unlink()
    assert monitor._freshness({stream})[stream] == (expected_event(t2), t2)
    assert monitor._freshness({stream})[stream] == (expected_event(t2), t2)   # nothing new: kept
    t3 = datetime(2026, 3, 3, 12)
    write(t1, ingested=t3)
    assert monitor._freshness({stream})[stream] == (expected_event(t2), t3)
    with pytest.raises(Exception, match="(?i)file.*(not exist|not found)|FileNotFound"):
        StreamMonitor(spark, lake, continuous=True)._freshness({stream})
