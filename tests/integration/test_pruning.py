"""History reads prune silver's event_date partitions (DESIGN section 8: no micro-batch
reads a whole table)."""
from __future__ import annotations

from datetime import date

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
