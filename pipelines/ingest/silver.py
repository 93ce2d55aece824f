"""bronze.events -> silver.usage_events, silver.account_events, silver.duplicates, silver.quarantine.

Shape of one run:

    bronze (Delta stream)
      -> silver_input            typed columns + the first contract violation (fast path for
                                 good records), personal data protected, hot-path keys
      -> with_state_claims       each good record claims its copy (identity + bytes) and its
                                 event (identity) in the dedup state; bad records their own key
      -> drop_hot_duplicates     dropDuplicatesWithinWatermark on the claims, watermark on
                                 ingestion time, horizon H
      -> foreachBatch            plan the batch from its own rows and the few silver rows its
                                 keys can touch, pruned by event date (silver_plan.py,
                                 no writes), then write it in the crash-safe order and record it

A micro-batch costs what its own rows cost (DESIGN section 8):

- Byte-identical re-sends within H never reach the batch (their copy claim is dropped).
- A copy whose event claim was dropped is a conflicting copy of an event seen within H:
  it goes to silver.duplicates without a look at silver.
- An event claim that survives means no copy was seen within H; only a record whose first
  copy may have left the state (its occurred_at older than ingested_at - H + future
  tolerance, dedup.with_needs_lookup) is looked up in silver, pruned to its event date.
- Custom rules decide from their own state (silver.rule_state: a calendar-period key's
  kept event, a retry-window key's anchor and latest event), looked up for the touched keys
  only, in the periods and windows they can touch. The stream writer keeps a copy of the
  table's recent rows (StateCopy: read once, grown by its own appends, dropped when anyone
  else commits), so the lookup costs no Delta read. Only a batch with
  an event earlier than what its key's state has seen (a late event) reads the touched
  keys' stored events within their period or window, and re-decides them.
- Steady state is one append per non-empty table, committed side by side with the batch
  record; the first batch of a run, which may replay a crashed attempt, adds only the rows
  its offset ranges lack (BatchWrite). A MERGE runs only when a rule decision about a
  stored event changes (a late event re-anchors a key) or a backfill brings an earlier copy
  than the one silver holds.
- Apart from the writes, a batch runs a fixed handful of Spark jobs: the batch itself, its
  good rows, one profile (which history reads it needs, its offset ranges, its rule
  scopes' dates), the reads it needs, and one job for all the counts. A batch the profile
  shows to be appends only (no identity lookup, every rule key decided from its state)
  skips that job: its batch record's append counts it (SilverPlan.appends_only).

Why the watermark is on ingestion time: bronze's ingested_at only moves forward, so no row
is ever behind the watermark and Spark's stateful operator never silently drops a late
event. Event-time lateness is measured (is_late) and counted, not used to discard.

A replayed micro-batch (a crash before its checkpoint commit) meets the same state and the
same silver rows, minus its own: history reads leave out rows with the batch's own Kafka
coordinates, so the replay plans exactly what the first attempt planned, and every write
either adds only the rows missing from the batch's offset ranges (BatchWrite) or is keyed on
coordinates.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from py4j.protocol import Py4JError
from pyspark import InheritableThread
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.core import batch_expressions
from pipelines.core.contract import load_contract
from pipelines.core.context import JobContext, apply_trigger
from pipelines.core.tables import BRONZE_EVENTS as BRONZE
from pipelines.core.tables import SILVER_BATCHES as BATCHES
from pipelines.core.tables import spec
from pipelines.ingest import dedup as D
from pipelines.ingest.parse import filter_bad, parse_events, with_kafka_coordinates
from pipelines.ingest.pii import load_pii_config, with_protected_properties
from pipelines.ingest.pii_key import load_pii_key, spark_master
from pipelines.ingest.silver_plan import (
    ACCOUNT, COORDINATES, DUPLICATES, QUARANTINE, RULE_STATE, USAGE, SilverPlan, inside_ranges, plan_batch,
    rule_state_of,
)

log = logging.getLogger(__name__)

JOB = "silver"
TABLES = (USAGE, ACCOUNT, DUPLICATES, RULE_STATE, QUARANTINE, BATCHES)
# The stream writer's copy of silver.rule_state (StateCopy) holds the scope dates from this
# many days before the newest one it has seen; a batch reaching further back reads the table.
STATE_COPY_DAYS = 62
# Batches' state rows unioned into the copy before it is compacted into one local checkpoint.
STATE_COPY_PARTS = 16
# silver.rule_state's table property naming the rules it was built for (ensure_rule_state).
RULES_PROPERTY = "lakehouse.dedup_rules"
# The counts ops.silver_batches' row is made of (SilverBatchWriter._batch_record).
RECORD_COUNTS = ("account", "identity_duplicates", "unruled", "kept_by_rules", "rows_in", "quarantined", "rule_drops")
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
    """The hot state: claims (dedup.with_state_claims) seen within the horizon are dropped."""

    def transform(df: DataFrame) -> DataFrame:
        return (
            df.transform(D.with_state_claims)
            .withWatermark("ingested_at", f"{watermark_delay_seconds} seconds")
            .dropDuplicatesWithinWatermark([D.STATE_KEY])
            .drop(D.STATE_KEY)
        )

    return transform


def silver_input(bronze: DataFrame, ctx: JobContext) -> DataFrame:
    """Bronze rows -> parsed rows with hot-path keys (works on batch or stream)."""
    pii = load_pii_config()
    # Refuses a non-local run without a key (pipelines/ingest/pii_key.py), before any row is read.
    key = load_pii_key(pii, ctx.settings, spark_master(bronze.sparkSession))
    return (
        bronze.transform(parse_events(load_contract(1), ctx.silver))
        # Personal data in properties stays in bronze; every silver table gets hashes.
        .transform(with_protected_properties(pii, key))
        .transform(with_kafka_coordinates)
        .transform(with_hot_path_keys)
    )


@dataclass(frozen=True)
class BatchWrite:
    """Who writes: the stream's (query_id, batch_id), and how a replay is made harmless.

    Delta's idempotent append (txnAppId/txnVersion) costs a look at the table's
    transactions on every commit (about 0.4 s here, twice a plain append). Only the first
    batch a stream runs after a start can be a replay of a crashed attempt (Spark runs a
    batch only after the previous one committed), so only that one needs protecting, and
    it appends only the rows its own offset ranges do not hold yet. A backfill slice keeps
    the transaction ids (`txn`)."""
    query_id: str
    batch_id: int
    may_replay: bool = True
    txn: bool = False
    # A small batch writes one file per table: each extra task (the batch's rows sit in one
    # partition per shuffle partition, and unions add theirs up) costs more than its rows,
    # mostly in shipping the write's plan and Hadoop settings to it, and leaves a file to read.
    one_file: bool = False


@dataclass(frozen=True)
class StateCopy:
    """silver.rule_state as of `version`, from scope date `since` on, materialised.

    Why: a Delta read of a table changed since its last read rebuilds the table's state
    first (two Spark jobs, about 0.4 s here), and the writer appends to silver.rule_state
    every batch, so reading the touched keys' anchors from the table cost about 0.9 s a
    batch. The writer instead reads the table once, then adds the rows it appends itself.

    It stays exact only while the writer is the table's one writer, so it is checked
    before every use: the table's latest version must be the copy's, and each append of
    the writer's must land on the version right after it (its commit is tagged with
    `userMetadata`). A backfill, a rebuild or any other commit in between drops the copy,
    and the next batch reads the table again; so does the first batch of a run (a replay
    appends only what its crashed attempt did not)."""
    version: int
    since: date
    frame: DataFrame
    parts: int = 0


class SilverBatchWriter:
    """foreachBatch body. Uses the batch's own session; holds no Spark state itself.

    `claims=False` is the backfill's mode: a static slice has no dedup state, so every
    record is looked up in silver, unpruned (a batch job, for exactness)."""

    def __init__(self, ctx: JobContext, *, claims: bool = True):
        self.ctx = ctx
        self.lake = ctx.lake
        self.claims = claims
        self._started = False     # whether this run of the stream has met a batch yet
        self._state: StateCopy | None = None

    # -- the batch ---------------------------------------------------------------------
    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        self.write_batch(batch_df, batch_id, _query_id(batch_df.sparkSession))

    def write_batch(self, batch_df: DataFrame, batch_id: int, query_id: str) -> None:
        """One batch of claimed silver_input rows (or, for the backfill, plain silver_input
        rows), written under (query_id, batch_id)."""
        spark = batch_df.sparkSession
        if self.claims:
            # The writer's rule-state copy has no size estimate (without_size_estimate), so
            # Spark took it for a table of exabytes and built a bloom filter of the touched
            # keys for it, two extra jobs per batch, to prune rows already in memory. The
            # setting is the stream's own (a streaming query runs on a clone of the session);
            # a backfill keeps no copy and leaves its caller's session as it was.
            spark.conf.set("spark.sql.optimizer.runtime.bloomFilter.enabled", "false")
        # Materialised once; every frame below derives from it.
        batch = batch_df.localCheckpoint(eager=True)
        may_replay, self._started = not self._started, True
        try:
            rows = batch.count()
            if self.claims:   # the stream's own session; a backfill leaves its caller's alone
                batch_expressions.set_for_batch(spark, rows)
            if rows:   # stateful streams run empty batches to move the watermark
                small = batch_expressions.is_small(rows)
                who = BatchWrite(query_id, batch_id, may_replay=may_replay, txn=not self.claims, one_file=small)
                # A small batch's rows in one partition: every job below then runs one task
                # per stage instead of one per partition the stream's shuffle left (BatchWrite).
                rows_in = batch.coalesce(1) if small else batch
                # Lazy reads: the plan prunes each one to what the batch's keys can touch.
                plan = plan_batch(rows_in, lambda table: self.lake.read(spark, table), self.ctx.rules,
                                  self.ctx.silver, claims=self.claims,
                                  read_state=(lambda earliest: self._read_state(spark, earliest)) if self.claims else None)
                self._write(spark, plan, rows_in, who)
        except BaseException:
            self._state = None    # what the failed batch committed is unknown: read the table again
            raise
        finally:
            batch.unpersist()

    # -- the writer's copy of silver.rule_state (StateCopy) -----------------------------------
    def _read_state(self, spark: SparkSession, earliest: date | None) -> DataFrame:
        """silver.rule_state for a batch whose lookups start at scope date `earliest`."""
        latest = self._state_version(spark)
        copy = self._state
        if copy is None or copy.version != latest:
            rows = self.lake.read(spark, RULE_STATE)    # at `latest` or newer: a newer one fails the next check
            newest = rows.agg(F.max("scope_date")).first()[0] or earliest or datetime.now(UTC).date()
            since = newest - timedelta(days=STATE_COPY_DAYS)
            copy = self._state = StateCopy(latest, since, rows.filter(F.col("scope_date") >= since).localCheckpoint())
        if earliest is not None and earliest < copy.since:
            return self.lake.read(spark, RULE_STATE)
        return copy.frame

    def _state_version(self, spark: SparkSession) -> int | None:
        """silver.rule_state's latest version."""
        latest = self._latest_state_commit(spark)
        return None if latest is None else latest[0]

    def _latest_state_commit(self, spark: SparkSession) -> tuple[int, str | None] | None:
        """silver.rule_state's latest commit: its version and userMetadata (one commit file read)."""
        row = self.lake.delta(spark, RULE_STATE).history(1).select("version", "userMetadata").first()
        return None if row is None else (row[0], row[1])

    def _appended_state(self, spark: SparkSession, rows: DataFrame, who: BatchWrite) -> None:
        """After the batch appended `rows` to silver.rule_state: the copy gains them, stays
        as it is (no rows, so Delta committed nothing), or is dropped (StateCopy).

        One look at the latest commit decides: the batch's own (its tag) right after the
        copy's version, or still the copy's version (nothing appended). Anything else, such
        as another writer's commit before or after the batch's own, drops the copy."""
        copy = self._state
        if copy is None:
            return
        if who.may_replay:
            self._state = None
            return
        latest = self._latest_state_commit(spark)
        if latest is not None and latest[0] == copy.version:
            return
        if latest != (copy.version + 1, _state_tag(who)):
            self._state = None
            return
        frame, parts = copy.frame.unionByName(without_size_estimate(rows)), copy.parts + 1
        since = copy.since
        if parts >= STATE_COPY_PARTS:
            newest = frame.agg(F.max("scope_date")).first()[0]
            since = max(since, newest - timedelta(days=STATE_COPY_DAYS))
            frame, parts = without_size_estimate(frame.filter(F.col("scope_date") >= since).localCheckpoint()), 0
        self._state = StateCopy(copy.version + 1, since, frame, parts)

    # -- writes, in the crash-safe order ----------------------------------------------------
    def _write(self, spark: SparkSession, plan: SilverPlan, batch: DataFrame, who: BatchWrite) -> None:
        txn = (who, plan.own)
        counts = self._counts(plan, batch, record_only=plan.appends_only)
        if not plan.appends_only:
            counts = counts.localCheckpoint()    # counted once: read to choose the path, and by the record
        # Appends only: counted by the record's append itself, beside the others (the counts'
        # inputs are materialised by the plan, so they are the same whenever they run).
        record = self._batch_record(who.query_id, who.batch_id, counts)
        if plan.appends_only:
            # The steady state, told by the plan: no job to count the batch first. A table the
            # plan cannot tell empty is appended anyway; Delta commits nothing for no rows.
            self._append_all(spark, plan, record, txn, skip=plan.empty)
            return
        sizes = self._sizes(counts)
        corrections = any(sizes[k] for k in ("usage_deletes", "revived", "duplicate_updates",
                                             "usage_replaces", "account_replaces"))
        if not corrections:
            skip = {table for table, size in ((QUARANTINE, "quarantine"), (DUPLICATES, "duplicates"), (ACCOUNT, "account"),
                                              (RULE_STATE, "rule_state"), (USAGE, "usage")) if not sizes[size]}
            self._append_all(spark, plan, record, txn, skip=skip)
            return
        if sizes["quarantine"]:
            self._append(spark, plan.quarantine, QUARANTINE, txn)
        # Crash safety: a row moving between usage_events and duplicates is written to its
        # new table before it leaves the old one, so a crash in between leaves it in both
        # (harmless: the replay's plan repairs it), never in neither.
        if sizes["usage_deletes"] or sizes["revived"] or sizes["duplicate_updates"]:
            self._upsert_duplicates(spark, plan.duplicates)
        elif sizes["duplicates"]:
            self._append(spark, plan.duplicates, DUPLICATES, txn)
        if sizes["usage_replaces"] or sizes["usage_deletes"]:
            self._merge_usage(spark, plan.usage, plan.usage_deletes)
        elif sizes["usage"]:
            self._write_usage(spark, plan.usage, txn)
        if sizes["revived"]:
            self._delete_revived_duplicates(spark, plan.revived)
        if sizes["account_replaces"]:
            self._merge_account(spark, plan.account)
        elif sizes["account"]:
            self._append(spark, plan.account, ACCOUNT, txn)
        if sizes["rule_state"]:
            self._write_rule_state(spark, plan.rule_state, txn)
        self._append(spark, record, BATCHES, txn)

    def _append_all(self, spark: SparkSession, plan: SilverPlan, record: DataFrame, txn: tuple, *, skip) -> None:
        """Appends only, to different tables, so they commit side by side. A replay after a
        crash part-way adds exactly what is missing (BatchWrite)."""
        writes = [(rows, table) for rows, table in (
            (plan.quarantine, QUARANTINE), (plan.duplicates, DUPLICATES), (plan.account, ACCOUNT)) if table not in skip]
        calls = [lambda rows=rows, table=table: self._append(spark, rows, table, txn) for rows, table in writes]
        if RULE_STATE not in skip:
            calls.append(lambda: self._write_rule_state(spark, plan.rule_state, txn))
        if USAGE not in skip:
            calls.append(lambda: self._write_usage(spark, plan.usage, txn))
        _run_together([*calls, lambda: self._append(spark, record, BATCHES, txn)])

    def _counts(self, plan: SilverPlan, batch: DataFrame, *, record_only: bool = False) -> DataFrame:
        """Every count the batch needs, as one row: which path each table takes (appends, or
        the MERGEs of the correction path), which writes are empty, and the batch record
        (with `record_only`, the batch record's counts alone).

        One union of tagged rows and one aggregate (a crossJoin of an aggregate per output
        would be a pair of stages each)."""
        copies = batch.transform(D.filter_copy_claims) if self.claims else batch
        no = F.lit(None)
        outputs = [   # (tag, rows, flag counted as `<tag>_flagged`, key of a count map)
            ("usage", plan.usage, F.col("_replaces"), no),
            ("account", plan.account, F.col("_replaces"), no),
            ("duplicates", plan.duplicates, F.col("_update"), no),
            ("usage_deletes", plan.usage_deletes, no, no),
            ("revived", plan.revived, no, no),
            ("identity_duplicates", plan.identity_duplicates, no, no),
            ("unruled", plan.unruled, no, no),
            ("rule_state", plan.rule_state, no, no),
            # What the rules added: kept events not stored in usage_events yet, dropped ones
            # not in duplicates yet (the correction path also moves stored events).
            ("kept_by_rules", D.filter_kept(plan.decided).filter(~F.col("_in_usage")), no, no),
            ("rows_in", copies, F.col("_problem").isNull() & F.col("is_late"), no),
            ("quarantined", filter_bad(copies), no, F.col("_problem.reason")),
            ("rule_drops", D.filter_dropped(plan.decided).filter(~F.col("_in_duplicates")), no, F.col("rule")),
        ]
        if record_only:
            outputs = [o for o in outputs if o[0] in RECORD_COUNTS]
        tagged = None
        for tag, rows, flag, key in outputs:
            part = rows.select(F.lit(tag).alias("_t"), flag.cast("boolean").alias("_f"), key.cast("string").alias("_k"))
            tagged = part if tagged is None else tagged.unionByName(part)
        # One task: a batch's rows are few, and a single partition needs no shuffle before
        # the aggregates (tasks and a stage boundary cost more than the counting).
        counts = tagged.coalesce(1).groupBy("_t", "_k").agg(F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("_f"), 1)).alias("nf"))
        columns = []
        for tag, _, _, key in outputs:
            mine = F.col("_t") == tag
            if tag in ("quarantined", "rule_drops"):
                columns.append(F.map_from_entries(F.collect_list(F.when(mine, F.struct("_k", "n")))).alias(tag))
            else:
                columns.append(F.coalesce(F.sum(F.when(mine, F.col("n"))), F.lit(0)).alias(tag))
                columns.append(F.coalesce(F.sum(F.when(mine, F.col("nf"))), F.lit(0)).alias(f"{tag}_flagged"))
        return counts.agg(*columns)

    @staticmethod
    def _sizes(counts: DataFrame) -> dict:
        sizes = counts.first().asDict()
        # plan.quarantine holds exactly the bad copies counted by reason.
        return {**sizes, "quarantine": sum(sizes["quarantined"].values()), "usage_replaces": sizes["usage_flagged"], "account_replaces": sizes["account_flagged"],
                "duplicate_updates": sizes["duplicates_flagged"], "late_events": sizes["rows_in_flagged"]}

    @staticmethod
    def _batch_record(query_id: str, batch_id: int, counts: DataFrame) -> DataFrame:
        """The batch's row of ops.silver_batches from its counts (`_counts`)."""
        values = {
            "query_id": F.lit(query_id), "batch_id": F.lit(batch_id), "rows_in": F.col("rows_in"),
            "quarantined": F.col("quarantined"), "identity_duplicates": F.col("identity_duplicates"),
            "rule_drops": F.col("rule_drops"), "late_events": F.col("rows_in_flagged"),
            # Kept usage: what the batch added to usage_events (new events without a rule,
            # events the rules kept).
            "usage_events": F.col("kept_by_rules") + F.col("unruled"), "account_events": F.col("account"),
            "processed_at": F.current_timestamp(),
        }
        return counts.select(*[values[f.name].cast(f.dataType).alias(f.name) for f in spec(BATCHES).struct_type().fields])

    def _append(self, spark: SparkSession, rows: DataFrame, table: str, txn: tuple) -> None:
        """An append a replayed batch cannot double (BatchWrite)."""
        who, own = txn
        if who.may_replay and not who.txn:
            if table == BATCHES:
                key, mine = ["query_id", "batch_id"], (F.col("query_id") == who.query_id) & (F.col("batch_id") == who.batch_id)
            else:
                key, mine = COORDINATES, inside_ranges(own)
            # File statistics on the coordinates skip every file but the batch's own.
            rows = rows.join(self.lake.read(spark, table).filter(mine).select(*key), on=key, how="left_anti")
        rows = rows.select(*spec(table).column_names)
        if who.one_file:
            rows = rows.coalesce(1)
        writer = rows.write.format("delta").mode("append")
        if who.txn:
            writer = writer.option("txnAppId", who.query_id).option("txnVersion", who.batch_id)
        if table == BATCHES:   # a lake made before a count was added gains its column
            writer = writer.option("mergeSchema", "true")
        if table == RULE_STATE:   # how the writer finds its own commit (StateCopy)
            writer = writer.option("userMetadata", _state_tag(who))
        self.lake.save(writer, table)

    def _write_rule_state(self, spark: SparkSession, rows: DataFrame, txn: tuple) -> None:
        """`rows`: materialised by the plan, so the copy keeps exactly what was appended.
        Appended without asking whether there are any (a job of its own): the copy's check
        after the append tells an empty one by the commit it did not make."""
        self._append(spark, rows, RULE_STATE, txn)
        self._appended_state(spark, rows, txn[0])

    def _write_usage(self, spark: SparkSession, rows: DataFrame, txn: tuple) -> None:
        self._append(spark, rows, USAGE, txn)

    def _upsert_duplicates(self, spark: SparkSession, source: DataFrame) -> None:
        cols = spec(DUPLICATES).column_names
        (self.lake.delta(spark, DUPLICATES).alias("t").merge(source.alias("s"), SAME_COPY)
         .whenMatchedUpdate(set={"rule": "s.rule", "duplicate_of": "s.duplicate_of"})
         .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
         .execute())

    def _delete_revived_duplicates(self, spark: SparkSession, revived: DataFrame) -> None:
        (self.lake.delta(spark, DUPLICATES).alias("t").merge(revived.alias("s"), SAME_COPY)
         .whenMatchedDelete().execute())

    def _merge_usage(self, spark: SparkSession, rows: DataFrame, deletes: DataFrame) -> None:
        """The correction path: rows a rule now drops leave, an earlier copy replaces the one
        stored (a backfill), new and revived rows come in."""
        cols = spec(USAGE).column_names
        source = (rows.select(*cols).withColumn("_delete", F.lit(False))
                  .unionByName(deletes.withColumn("_delete", F.lit(True)), allowMissingColumns=True))
        on = f"(({SAME_EVENT}) AND NOT s._delete) OR (({SAME_COPY}) AND s._delete)"
        (self.lake.delta(spark, USAGE).alias("t").merge(source.alias("s"), on)
         .whenMatchedDelete(condition="s._delete")
         .whenMatchedUpdate(condition=f"{_order_sql('s')} < {_order_sql('t')}", set={c: f"s.{c}" for c in cols})
         .whenNotMatchedInsert(condition="NOT s._delete", values={c: f"s.{c}" for c in cols})
         .execute())

    def _merge_account(self, spark: SparkSession, source: DataFrame) -> None:
        cols = spec(ACCOUNT).column_names
        earlier = f"{_order_sql('s')} < {_order_sql('t')}"
        (self.lake.delta(spark, ACCOUNT).alias("t").merge(source.select(*cols).alias("s"), SAME_EVENT)
         .whenMatchedUpdate(condition=earlier, set={c: f"s.{c}" for c in cols})
         .whenNotMatchedInsert(values={c: f"s.{c}" for c in cols})
         .execute())


def without_size_estimate(materialised: DataFrame) -> DataFrame:
    """A materialised frame (a local checkpoint) as a plain scan of its rows, with Spark's
    default size estimate instead of the estimate of the plan that computed it.

    Why: a checkpoint keeps its plan's size estimate, and Spark estimates a join's size as
    the product of its sides'. The copy's rows come from plans that join the copy itself,
    so its estimate squared with every batch: after about 20 batches with rule events the
    planner multiplied numbers of millions of digits, and the driver ran out of memory."""
    # Its rows as Spark holds them: `jdf.rdd()` turns every row into a Row object and back
    # on each scan, a cost every batch paid again for every row of the copy. The internal
    # call is Spark's own (package-private); a runtime without it gets the public one.
    jdf, jspark = materialised._jdf, materialised.sparkSession._jsparkSession
    try:
        rebuilt = jspark.internalCreateDataFrame(jdf.queryExecution().toRdd(), jdf.schema(), False)
    except Py4JError:
        rebuilt = jspark.createDataFrame(jdf.rdd(), jdf.schema())
    return DataFrame(rebuilt, materialised.sparkSession)


def _state_tag(who: BatchWrite) -> str:
    """The userMetadata of a batch's commit to silver.rule_state."""
    return f"silver {who.query_id} {who.batch_id}"


def _run_together(calls: list) -> None:
    """Run each call on its own thread (inheriting the batch's local properties) and wait
    for all; the first failure is raised once every call has finished."""
    errors: list[BaseException] = []

    def guarded(call):
        def run():
            try:
                call()
            except BaseException as e:  # noqa: BLE001 - re-raised on the batch's thread
                errors.append(e)
        return run

    if len(calls) == 1:
        calls[0]()
        return
    threads = [InheritableThread(target=guarded(call)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _query_id(spark: SparkSession) -> str:
    """The running stream's id, which Spark sets on the thread that calls foreachBatch."""
    query_id = spark.sparkContext.getLocalProperty("sql.streaming.queryId")
    if not query_id:
        raise RuntimeError("SilverBatchWriter runs inside a streaming query's foreachBatch only")
    return query_id


def _order_sql(alias: str) -> str:
    return "struct(" + ", ".join(f"{alias}.{c}" for c in D.ORDER_COLUMNS) + ")"


def rules_fingerprint(rules) -> str:
    """The dedup rules as the rule state depends on them (kind, metric, period, window)."""
    return json.dumps([[r.name, r.metric, r.kind, r.period, r.window.total_seconds() if r.window else None]
                       for r in sorted(rules, key=lambda r: r.name)], separators=(",", ":"))


def ensure_rule_state(spark: SparkSession, ctx: JobContext) -> None:
    """silver.rule_state as the stored events and the configured rules make it: built from
    the silver tables when it is missing, or was built for other rules (a changed window or
    period: the state is a fold under the rules), else left alone.

    A start-up step, reading the stored rule events once; micro-batches then add to it."""
    lake = ctx.lake
    fingerprint = rules_fingerprint(ctx.rules)
    if not any(lake.exists(spark, t) for t in (USAGE, DUPLICATES, RULE_STATE)):
        # A new lake: nothing stored to build from (one commit, not a build).
        lake.ensure(spark, RULE_STATE, properties={RULES_PROPERTY: fingerprint})
        return
    for table in (USAGE, DUPLICATES, RULE_STATE):
        lake.ensure(spark, table)
    if lake.properties(spark, RULE_STATE).get(RULES_PROPERTY) == fingerprint:
        return
    log.info("silver.rule_state: building from the stored events for rules %s", fingerprint)
    rows = rule_state_of(lambda table: lake.read(spark, table), ctx.rules)
    lake.save(rows.write.format("delta").mode("overwrite"), RULE_STATE)
    # Last: a crash before it leaves the property unset, and the next start rebuilds.
    lake.set_property(spark, RULE_STATE, RULES_PROPERTY, fingerprint)


def start(spark: SparkSession, ctx: JobContext) -> StreamingQuery:
    ensure_rule_state(spark, ctx)    # first: on a new lake it is created with its rules
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
