"""bronze.events -> silver.usage_events, silver.account_events, silver.duplicates, silver.quarantine.

Shape of one run:

    bronze (Delta stream)
      -> parse_events            typed columns + the first contract violation, if any
      -> hot-path identity dedup dropDuplicatesWithinWatermark on (identity, payload hash),
                                 watermark on ingestion time
      -> foreachBatch            quarantine bad rows; first copy per identity by Kafka order;
                                 guard against silver history; custom rules over the keys the
                                 batch touches (history + new rows); idempotent MERGEs

Why the hot path keys on the payload hash too: inside one micro-batch Spark keeps whichever
copy its shuffle delivers first, not the first in Kafka order. Keying on (identity, payload)
only ever merges byte-identical copies, where the choice cannot change what is billed;
copies that differ reach foreachBatch, where the first in Kafka order wins explicitly.

Why the watermark is on ingestion time: bronze's ingested_at only moves forward, so no row
is ever behind the watermark and Spark's stateful operator never silently drops a late
event. Event-time lateness is measured (is_late) and counted, not used to discard.

Every write is a MERGE keyed on identity or Kafka coordinates, so replaying a batch after
a crash, or rebuilding silver from bronze with a fresh checkpoint, converges on the same
tables.
"""
from __future__ import annotations

import logging

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.contract import load_contract
from pipelines.jobs.common import JobContext, apply_trigger
from pipelines.pii import load_pii_config, with_protected_properties
from pipelines.tables import spec
from pipelines.transforms import dedup as D
from pipelines.transforms.parse import filter_bad, filter_good, parse_events, with_kafka_coordinates

log = logging.getLogger(__name__)

JOB = "silver"
BRONZE = "bronze.events"
USAGE = "silver.usage_events"
ACCOUNT = "silver.account_events"
DUPLICATES = "silver.duplicates"
QUARANTINE = "silver.quarantine"
BATCHES = "ops.silver_batches"
TABLES = (USAGE, ACCOUNT, DUPLICATES, QUARANTINE, BATCHES)
COORDINATES = ["kafka_topic", "kafka_partition", "kafka_offset"]
# MERGE conditions: a copy is found by its Kafka coordinates, an event by its identity.
SAME_COPY = " AND ".join(f"t.{c} = s.{c}" for c in COORDINATES)
SAME_EVENT = " AND ".join(f"t.{c} = s.{c}" for c in D.IDENTITY)


def read_bronze(spark: SparkSession, ctx: JobContext) -> DataFrame:
    reader = spark.readStream.format("delta")
    if ctx.run.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(ctx.run.max_files_per_trigger))
    return ctx.lake.read_stream(reader, BRONZE)


def with_hot_path_keys(df: DataFrame) -> DataFrame:
    """_identity for good rows; a per-record key for bad rows so they never merge."""
    coordinates = F.concat_ws(":", F.lit("record"), "topic", "partition", "offset")
    return df.withColumns({
        "_identity": F.when(F.col("_problem").isNull(), F.concat_ws("\u0000", "account_id", "event_id"))
        .otherwise(coordinates),
        "payload_sha256": F.sha2(F.col("value"), 256),
    })


def drop_hot_duplicates(watermark_delay_seconds: int):
    def transform(df: DataFrame) -> DataFrame:
        return (
            df.withWatermark("ingested_at", f"{watermark_delay_seconds} seconds")
            .withColumn("_payload", F.coalesce("payload_sha256", F.lit("")))
            .dropDuplicatesWithinWatermark(["_identity", "_payload"])
            .drop("_payload")
        )

    return transform


def silver_input(bronze: DataFrame, ctx: JobContext) -> DataFrame:
    """Bronze rows -> parsed rows after the hot-path dedup (works on batch or stream)."""
    pii = load_pii_config()
    return (
        bronze.transform(parse_events(load_contract(1), ctx.silver))
        # Personal data in properties stays in bronze; every silver table gets hashes.
        .transform(with_protected_properties(pii, pii.salt()))
        .transform(with_kafka_coordinates)
        .transform(with_hot_path_keys)
    )


def to_quarantine_rows(df: DataFrame) -> DataFrame:
    return df.select(
        "key", "value", F.col("_problem.reason").alias("reason"), F.col("_problem.detail").alias("detail"),
        "event_id", "account_id", *COORDINATES, "kafka_timestamp", "ingested_at", "payload_sha256",
    ).select(*spec(QUARANTINE).column_names)


def _with_missing_columns(df: DataFrame, columns: list[str], table: str) -> DataFrame:
    types = {c.name: c.type for c in spec(table).columns}
    return df.withColumns({c: F.lit(None).cast(types[c]) for c in columns if c not in df.columns})


def _select_for(df: DataFrame, table: str, *extra: str) -> DataFrame:
    cols = spec(table).column_names
    return _with_missing_columns(df, cols, table).select(*cols, *extra)


class SilverBatchWriter:
    """foreachBatch body. Uses the batch's own session; holds no Spark state itself."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self.lake = ctx.lake

    # -- one read of current silver state, narrowed to the keys a batch touches ----------
    def _history(self, spark: SparkSession, keys: DataFrame, rule_keys: DataFrame) -> DataFrame:
        """The silver rows a batch's dedup depends on, in one scan of each table: rows of the
        batch's identities (any table: `_by_identity`) and rows of its custom-rule keys
        (usage_events and the rule-dropped duplicates: `_by_rule`). `_in` names the table
        holding each row."""
        usage_cols = spec(USAGE).column_names
        known = (
            self.lake.read(spark, USAGE).select(*usage_cols).withColumn("_in", F.lit(USAGE))
            .unionByName(self.lake.read(spark, DUPLICATES).filter(F.col("rule") != D.IDENTITY_RULE)
                         .select(*usage_cols, "rule", "duplicate_of").withColumn("_in", F.lit(DUPLICATES)),
                         allowMissingColumns=True)
            .transform(D.with_rule_name(self.ctx.rules))
            .unionByName(self.lake.read(spark, ACCOUNT).select(*D.IDENTITY, *D.ORDER_COLUMNS, "payload_sha256")
                         .withColumn("_in", F.lit(ACCOUNT)), allowMissingColumns=True)
        )
        return (
            known.join(F.broadcast(keys.withColumn("_by_identity", F.lit(True))), on=D.IDENTITY, how="left")
            .join(F.broadcast(rule_keys.withColumn("_by_rule", F.lit(True))), on=D.RULE_KEY, how="left")
            .filter(F.col("_by_identity") | F.col("_by_rule"))
        )

    # -- the batch ---------------------------------------------------------------------
    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        self.write_batch(batch_df, batch_id, _query_id(batch_df.sparkSession))

    def write_batch(self, batch_df: DataFrame, batch_id: int, query_id: str) -> None:
        """One batch of silver_input rows, written under (query_id, batch_id). The stream
        calls it per micro-batch; a backfill calls it once on a static bronze slice, so both
        apply exactly the same dedup and MERGEs."""
        spark = batch_df.sparkSession
        # Materialise the batch once and cut its lineage: every DataFrame below derives from
        # it, and without the cut each of them would re-analyse the whole parse plan (a
        # few hundred expressions) before running.
        batch = batch_df.localCheckpoint(eager=True)
        try:
            # Stateful streams run empty batches to move the watermark; nothing to write.
            if not batch.isEmpty():
                self._process(spark, batch, batch_id, query_id)
        finally:
            batch.unpersist()

    def _process(self, spark: SparkSession, batch: DataFrame, batch_id: int, query_id: str) -> None:
        rules = self.ctx.rules
        usage_cols = spec(USAGE).column_names

        quarantine = batch.transform(filter_bad).transform(to_quarantine_rows)
        # Materialised: the first copies feed the history read and the classification, the
        # repeated ones the duplicates, and each would otherwise sort the batch again.
        good = batch.transform(filter_good).transform(D.with_kafka_order).transform(D.with_copy_rank).localCheckpoint()
        first = good.transform(D.filter_first_copies)
        in_batch_copies = good.transform(D.filter_repeated_copies)

        keys = first.select(*D.IDENTITY).distinct()
        # The rule keys of every first copy: a superset of those the rules will recompute
        # (late copies among them are dropped below), so one history read serves both checks.
        maybe_rule_keys = (
            first.transform(D.with_rule_name(rules)).filter(F.col("_rule").isNotNull()).select(*D.RULE_KEY).distinct()
        )
        # Each intermediate result feeds several writes; materialising it once (and cutting
        # its lineage) keeps every MERGE from recomputing windows and history joins.
        history = self._history(spark, keys, maybe_rule_keys).localCheckpoint()
        identity_history = (
            history.filter(F.col("_by_identity")).select(*D.IDENTITY, *D.ORDER_COLUMNS, "payload_sha256")
            .transform(D.history_first_copies)
        )
        classified = first.transform(D.with_history_order(identity_history)).localCheckpoint()
        new_events = classified.transform(D.filter_new_events)
        late_copies = classified.transform(D.filter_late_copies)
        identity_duplicates = in_batch_copies.unionByName(late_copies).localCheckpoint()
        conflicting_copies = identity_duplicates.transform(D.filter_conflicting_copies)

        usage_new = new_events.filter(F.col("event_type") == "usage").transform(D.with_rule_name(rules))
        account_new = _select_for(new_events.filter(F.col("event_type") != "usage"), ACCOUNT).localCheckpoint()

        rule_input = usage_new.filter(F.col("_rule").isNotNull())
        rule_keys = rule_input.select(*D.RULE_KEY).distinct()
        rule_history = (
            history.filter(F.col("_in") != ACCOUNT).join(F.broadcast(rule_keys), on=D.RULE_KEY, how="left_semi")
            .select(*usage_cols, "_rule", "_in", "rule", "duplicate_of")
        ).localCheckpoint()
        candidates = (
            rule_history.drop("_in", "rule", "duplicate_of")
            .unionByName(rule_input.select(*usage_cols, "_rule"))
            .transform(D.with_kafka_order).transform(D.with_copy_rank).transform(D.filter_first_copies)
        )
        decided = candidates.transform(D.apply_dedup_rules(rules)).localCheckpoint()
        # Kept now but held in silver.duplicates: an earlier event re-anchored the rule. A
        # crash between two writes can leave a row in both tables, so this is matched on
        # coordinates against the duplicates rows, not on which copy the ranking picked.
        revived = (
            D.filter_kept(decided).select(*COORDINATES)
            .join(rule_history.filter(F.col("_in") == DUPLICATES).select(*COORDINATES), on=COORDINATES, how="left_semi")
        )

        # The rules re-decide every stored event of the keys they touch, and most decisions
        # stand. A row a MERGE matches still makes Delta rewrite its whole file even when
        # no clause fires, so decisions the tables already hold stay out of the sources.
        stored_kept = rule_history.filter(F.col("_in") == USAGE).select(*COORDINATES)
        stored_dropped = rule_history.filter(F.col("_in") == DUPLICATES).select(*COORDINATES, "rule", "duplicate_of")
        usage_unruled = (
            usage_new.filter(F.col("_rule").isNull()).withColumn("_decision", F.lit(D.KEPT))
            .select(*usage_cols, "_decision")
        )
        usage_source = (
            usage_unruled
            .unionByName(D.filter_dropped(decided).select(*usage_cols, "_decision"))
            .unionByName(D.filter_kept(decided).join(stored_kept, on=COORDINATES, how="left_anti")
                         .select(*usage_cols, "_decision"))
        ).localCheckpoint()
        duplicates_source = (
            _select_for(conflicting_copies, DUPLICATES, "_decision")
            .unionByName(_select_for(
                D.filter_dropped(decided).join(stored_dropped, on=[*COORDINATES, "rule", "duplicate_of"], how="left_anti"),
                DUPLICATES, "_decision"))
        ).localCheckpoint()
        kept_usage = usage_unruled.unionByName(D.filter_kept(decided).select(*usage_cols, "_decision"))

        self._merge_quarantine(spark, quarantine)
        # Order matters for crash safety: a row moving between usage_events and
        # duplicates is first written to its new table and only then removed from the
        # old one, so a crash in between leaves it in both (harmless, repaired by the
        # replay), never in neither.
        self._upsert_duplicates(spark, duplicates_source)
        self._merge_usage(spark, usage_source)
        self._delete_revived_duplicates(spark, revived)
        self._merge_account(spark, account_new)
        self._record_batch(spark, query_id, batch_id, batch, identity_duplicates, decided, kept_usage, account_new)

    # -- writes --------------------------------------------------------------------------
    def _merge_quarantine(self, spark: SparkSession, rows: DataFrame) -> None:
        if rows.isEmpty():
            return
        (self.lake.delta(spark, QUARANTINE).alias("t").merge(rows.alias("s"), SAME_COPY)
         .whenNotMatchedInsertAll().execute())

    def _upsert_duplicates(self, spark: SparkSession, source: DataFrame) -> None:
        if source.isEmpty():
            return
        (self.lake.delta(spark, DUPLICATES).alias("t").merge(source.alias("s"), SAME_COPY)
         .whenMatchedUpdate(condition=f"s._decision = '{D.DROPPED}'",
                            set={"rule": "s.rule", "duplicate_of": "s.duplicate_of"})
         .whenNotMatchedInsert(condition=f"s._decision = '{D.DROPPED}'",
                               values={c: f"s.{c}" for c in spec(DUPLICATES).column_names})
         .execute())

    def _delete_revived_duplicates(self, spark: SparkSession, revived: DataFrame) -> None:
        if revived.isEmpty():
            return
        (self.lake.delta(spark, DUPLICATES).alias("t").merge(revived.alias("s"), SAME_COPY)
         .whenMatchedDelete().execute())

    def _merge_usage(self, spark: SparkSession, source: DataFrame) -> None:
        if source.isEmpty():
            return
        earlier = f"{_order_sql('s')} < {_order_sql('t')}"
        (self.lake.delta(spark, USAGE).alias("t").merge(source.alias("s"), SAME_EVENT)
         .whenMatchedDelete(condition=f"s._decision = '{D.DROPPED}'")
         .whenMatchedUpdate(condition=earlier, set={c: f"s.{c}" for c in spec(USAGE).column_names})
         .whenNotMatchedInsert(condition=f"s._decision = '{D.KEPT}'",
                               values={c: f"s.{c}" for c in spec(USAGE).column_names})
         .execute())

    def _merge_account(self, spark: SparkSession, source: DataFrame) -> None:
        if source.isEmpty():
            return
        earlier = f"{_order_sql('s')} < {_order_sql('t')}"
        (self.lake.delta(spark, ACCOUNT).alias("t").merge(source.alias("s"), SAME_EVENT)
         .whenMatchedUpdateAll(condition=earlier)
         .whenNotMatchedInsertAll()
         .execute())

    def _record_batch(self, spark, query_id, batch_id, batch, identity_duplicates, decided, kept_usage,
                      account_new) -> None:
        bad = filter_bad(batch)
        reasons = bad.groupBy(F.col("_problem.reason").alias("r")).count().agg(
            F.map_from_entries(F.collect_list(F.struct("r", "count"))).alias("quarantined"))
        drops = decided.filter(F.col("_decision") == D.DROPPED).groupBy("rule").count().agg(
            F.map_from_entries(F.collect_list(F.struct("rule", "count"))).alias("rule_drops"))
        totals = batch.agg(
            F.count(F.lit(1)).alias("rows_in"),
            F.count(F.when(F.col("_problem").isNull() & F.col("is_late"), 1)).alias("late_events"),
        )
        row = (
            totals.crossJoin(reasons).crossJoin(drops)
            .crossJoin(identity_duplicates.agg(F.count(F.lit(1)).alias("identity_duplicates")))
            .crossJoin(kept_usage.agg(F.count(F.lit(1)).alias("kept_usage")))
            .crossJoin(account_new.agg(F.count(F.lit(1)).alias("account_events")))
            .select(
                F.lit(query_id).alias("query_id"), F.lit(batch_id).cast("bigint").alias("batch_id"),
                "rows_in", "quarantined",
                "identity_duplicates", "rule_drops", "late_events",
                F.col("kept_usage").alias("usage_events"),
                "account_events", F.current_timestamp().alias("processed_at"),
            )
        )
        # Delta's idempotent-write options: a replayed batch finds its version committed
        # for this query and appends nothing (cheaper than a MERGE on every batch).
        self.lake.save(row.write.format("delta").mode("append")
                       .option("txnAppId", query_id).option("txnVersion", batch_id).option("mergeSchema", "true"),
                       BATCHES)


def _query_id(spark: SparkSession) -> str:
    """The running stream's id, which Spark sets on the thread that calls foreachBatch."""
    query_id = spark.sparkContext.getLocalProperty("sql.streaming.queryId")
    if not query_id:
        raise RuntimeError("SilverBatchWriter runs inside a streaming query's foreachBatch only")
    return query_id


def _order_sql(alias: str) -> str:
    return "struct(" + ", ".join(f"{alias}.{c}" for c in D.ORDER_COLUMNS) + ")"


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    for table in (BRONZE, *TABLES):
        ctx.lake.ensure(spark, table)
    delay = int(ctx.silver.watermark_delay.total_seconds())
    stream = read_bronze(spark, ctx).transform(lambda df: silver_input(df, ctx)).transform(drop_hot_duplicates(delay))
    writer = (
        stream.writeStream.queryName(JOB)
        .foreachBatch(SilverBatchWriter(ctx))
        .option("checkpointLocation", ctx.lake.checkpoint(JOB, "events"))
    )
    return apply_trigger(writer, ctx.run).start()
