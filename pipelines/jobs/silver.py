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
                                 keys can touch (pruned by event date), then write it

A micro-batch costs what its own rows cost (DESIGN section 8):

- Byte-identical re-sends within H never reach the batch (their copy claim is dropped).
- A copy whose event claim was dropped is a conflicting copy of an event seen within H:
  it goes to silver.duplicates without a look at silver.
- An event claim that survives means no copy was seen within H; only a record whose first
  copy may have left the state (its occurred_at older than ingested_at - H + future
  tolerance, dedup.with_needs_lookup) is looked up in silver, pruned to its event date.
- Custom rules read only the touched keys' stored events within their period or window.
- Steady state is one append per non-empty table, committed side by side with the batch
  record; the first batch of a run, which may replay a crashed attempt, adds only the rows
  its offset ranges lack (BatchWrite). A MERGE runs only when a rule decision about a
  stored event changes (a late event re-anchors a key) or a backfill brings an earlier copy
  than the one silver holds.
- Apart from the writes, a batch runs a fixed handful of Spark jobs: the batch itself, its
  good rows, one profile (which history reads it needs, its offset ranges, its rule
  scopes' dates), the reads it needs, and one job for all the counts.

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

import logging
from dataclasses import dataclass

from pyspark import InheritableThread
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.contract import load_contract
from pipelines.jobs.common import JobContext, apply_trigger
from pipelines.pii import load_pii_config, with_protected_properties
from pipelines.tables import filter_touched_partitions, spec
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
SAME_COPY = " AND ".join(f"t.{c} = s.{c}" for c in COORDINATES)
SAME_EVENT = " AND ".join(f"t.{c} = s.{c}" for c in D.IDENTITY)
# Stored silver rows carry where they are: kept (usage_events) or dropped by a rule (duplicates).
IN_USAGE = "usage"
IN_DUPLICATES = "duplicates"
# Future occurred_at is quarantined after this many days; a retry chain's stored events can
# lie up to that far ahead of today.
_FUTURE_DAYS = 2


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


def select_for(df: DataFrame, table: str, *extra: str) -> DataFrame:
    cols = spec(table).column_names
    return _with_missing_columns(df, cols, table).select(*cols, *extra)


def _dates_between(start: Column, end: Column) -> Column:
    return F.explode(F.sequence(F.to_date(start), F.to_date(end)))


# -- the plan: pure, from the batch and the history rows it reads -----------------------------
@dataclass
class SilverPlan:
    """What one batch writes where. Frames only; `corrections` says whether any stored row
    moves (the MERGE path) or the batch is pure appends."""
    quarantine: DataFrame
    usage: DataFrame            # rows to add to usage_events (+ `_replaces`: an earlier copy of a stored one)
    account: DataFrame          # rows to add to account_events (+ `_replaces`)
    duplicates: DataFrame       # rows to add to (or update in) silver.duplicates
    usage_deletes: DataFrame    # coordinates of stored usage rows a rule now drops
    revived: DataFrame          # coordinates of duplicates rows a rule now keeps
    identity_duplicates: DataFrame
    decided: DataFrame
    unruled: DataFrame          # new usage events no custom rule governs (counted in the batch record)
    own: list | DataFrame       # the batch's rows: offset ranges (a stream) or coordinates (a backfill)


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


class SilverBatchWriter:
    """foreachBatch body. Uses the batch's own session; holds no Spark state itself.

    `claims=False` is the backfill's mode: a static slice has no dedup state, so every
    record is looked up in silver, unpruned (a batch job, for exactness)."""

    def __init__(self, ctx: JobContext, *, claims: bool = True):
        self.ctx = ctx
        self.lake = ctx.lake
        self.claims = claims
        self._started = False     # whether this run of the stream has met a batch yet

    # -- history reads, each pruned to what the batch can touch ---------------------------
    def _stored(self, spark: SparkSession, table: str, dates: DataFrame | Column | None, own) -> DataFrame:
        """A silver table's rows on the given dates (a frame of dates, pruned at run time, or
        a predicate on event_date, pruned when planned), without the batch's own rows (a
        replay of the batch must plan as its first attempt did).

        The stream's batch is one offset range per Kafka partition (`own`: a list of
        (topic, partition, first, last), known before any read), so its rows are told by a
        predicate; a backfill slice is not, and is told by its coordinates (a frame)."""
        df = self.lake.read(spark, table)
        if isinstance(dates, Column):
            df = df.filter(dates)
        elif dates is not None:
            df = df.transform(filter_touched_partitions(dates, ["event_date"]))
        if not self.claims:
            return df.join(F.broadcast(own), on=COORDINATES, how="left_anti")
        return df.filter(~_inside(own))

    def _identity_history(self, spark: SparkSession, probe: DataFrame, own: DataFrame) -> DataFrame:
        """Kept copies (any silver table but conflicting-copy rows) of the probed identities."""
        dates = probe.select("event_date").distinct() if self.claims else None
        keys = probe.select(*D.IDENTITY).distinct()
        cols = [*D.IDENTITY, *D.ORDER_COLUMNS, "payload_sha256"]
        stored = None
        for table in (USAGE, ACCOUNT, DUPLICATES):
            part = self._stored(spark, table, dates, own)
            if table == DUPLICATES:
                part = part.filter(F.col("rule") != D.IDENTITY_RULE)
            part = part.join(F.broadcast(keys), on=D.IDENTITY, how="left_semi").select(*cols)
            stored = part if stored is None else stored.unionByName(part)
        return stored

    def _rule_history(self, spark: SparkSession, new_rule_events: DataFrame, own, span: tuple | None) -> DataFrame:
        """Stored events of the touched rule keys within each new event's scope, each with its
        key's `_first_new` (where a retry-window refold starts). `span`: the first and last
        event_date any scope can reach, when the batch knows them already."""
        rules = self.ctx.rules
        scoped = new_rule_events.transform(D.with_rule_scope(rules))
        # One span per key (its events' scopes together): a stored event inside the span but
        # outside every scope is re-decided as it stands, which changes nothing.
        # One aggregate, one broadcast: the scopes and the refold starts together.
        scopes = scoped.groupBy(*D.RULE_KEY).agg(F.min("_scope_start").alias("_scope_start"),
                                                 F.max(_scope_end()).alias("_scope_end"),
                                                 D.first_new_position(rules).alias("_first_new"))
        if span is not None and span[0] is not None:
            dates = F.col("event_date").between(F.lit(span[0]), F.lit(span[1]))
        else:
            dates = scopes.select(_dates_between(F.col("_scope_start"), F.col("_scope_end"))
                                  .alias("event_date")).distinct()
        usage_cols = spec(USAGE).column_names
        kept = self._stored(spark, USAGE, dates, own).select(*usage_cols).withColumns(
            {"_in": F.lit(IN_USAGE), "rule": F.lit(None).cast("string"), "duplicate_of": F.lit(None).cast("string")})
        dropped = (self._stored(spark, DUPLICATES, dates, own).filter(F.col("rule") != D.IDENTITY_RULE)
                   .select(*usage_cols, "rule", "duplicate_of").withColumn("_in", F.lit(IN_DUPLICATES)))
        stored = kept.unionByName(dropped).transform(D.with_rule_name(rules)).filter(F.col("_rule").isNotNull())
        in_scope = (F.col("occurred_at") >= F.col("_scope_start")) & (F.col("occurred_at") < F.col("_scope_end"))
        return (stored.join(F.broadcast(scopes), on=D.RULE_KEY, how="inner").filter(in_scope)
                .drop("_scope_start", "_scope_end"))

    # -- the batch ---------------------------------------------------------------------
    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        self.write_batch(batch_df, batch_id, _query_id(batch_df.sparkSession))

    def write_batch(self, batch_df: DataFrame, batch_id: int, query_id: str) -> None:
        """One batch of claimed silver_input rows (or, for the backfill, plain silver_input
        rows), written under (query_id, batch_id)."""
        spark = batch_df.sparkSession
        # Materialised once; every frame below derives from it.
        batch = batch_df.localCheckpoint(eager=True)
        who = BatchWrite(query_id, batch_id, may_replay=not self._started, txn=not self.claims)
        self._started = True
        try:
            if not batch.isEmpty():   # stateful streams run empty batches to move the watermark
                plan = self.plan(spark, batch)
                self._write(spark, plan, batch, who)
        finally:
            batch.unpersist()

    def plan(self, spark: SparkSession, batch: DataFrame) -> SilverPlan:
        rules = self.ctx.rules
        silver = self.ctx.silver
        copies = batch.transform(D.filter_copy_claims).drop(D.CLAIM) if self.claims else batch
        quarantine = copies.transform(filter_bad).transform(to_quarantine_rows)
        if self.claims:
            good = (batch.transform(filter_good).transform(D.with_event_claimed)
                    .transform(D.filter_copy_claims).drop(D.CLAIM)
                    .transform(D.with_kafka_order).transform(D.with_copy_rank)
                    .transform(D.with_needs_lookup(int(silver.watermark_delay.total_seconds()),
                                                   int(silver.future_tolerance.total_seconds())))
                    .withColumn("_needs_lookup", F.col("_claimed") & F.col("_needs_lookup")))
        else:
            good = (copies.transform(filter_good).transform(D.with_kafka_order).transform(D.with_copy_rank)
                    .withColumns({"_claimed": F.lit(True), "_needs_lookup": F.lit(True)}))
        good = good.transform(D.with_rule_name(rules)).localCheckpoint()
        first = good.transform(D.filter_first_copies)
        # One small aggregate decides which history reads the batch needs at all, and what
        # they may touch: the batch's own offset ranges and the rule scopes' dates.
        rule_scope = (first.filter(F.col("_claimed") & F.col("_rule").isNotNull())
                      .transform(D.with_rule_scope(rules)))
        profile = (
            first.agg(F.count(F.when(F.col("_claimed") & F.col("_needs_lookup"), 1)).alias("probe"),
                      F.count(F.when(F.col("_claimed") & F.col("_rule").isNotNull(), 1)).alias("rule"))
            .crossJoin(rule_scope.agg(F.to_date(F.min("_scope_start")).alias("first_date"),
                                      F.to_date(F.max(_scope_end())).alias("last_date")))
            .crossJoin(copies.groupBy("kafka_topic", "kafka_partition")
                       .agg(F.min("kafka_offset").alias("first"), F.max("kafka_offset").alias("last"))
                       .agg(F.collect_list(F.struct("kafka_topic", "kafka_partition", "first", "last")).alias("own")))
        ).first()
        own = (copies.select(*COORDINATES) if not self.claims else
               [tuple(r) for r in profile["own"]])
        span = (profile["first_date"], profile["last_date"]) if self.claims else None

        in_batch_copies = good.transform(D.filter_repeated_copies)
        # An unclaimed event was seen within H in an earlier batch: its copies here differ
        # from every copy seen since (identical ones lost their copy claim), so each is a
        # conflicting copy of the kept one.
        recent_copies = first.filter(~F.col("_claimed")).withColumns({
            "rule": F.lit(D.IDENTITY_RULE), "duplicate_of": F.col("event_id"), "_decision": F.lit(D.DROPPED),
            "_kept_payload": F.lit(None).cast("string")})
        candidates = first.filter(F.col("_claimed"))
        if profile["probe"]:
            # The rare rows whose first copy may have left the state: one pruned look at silver.
            seen = (self._identity_history(spark, candidates.filter(F.col("_needs_lookup")), own)
                    .transform(D.history_first_copies))
            classified = (candidates.join(F.broadcast(seen), on=D.IDENTITY, how="left")
                          .transform(_with_replaces).localCheckpoint())
        else:
            # Nothing read: the candidates are the checkpointed good rows, filtered.
            classified = candidates.withColumns({"_seen_order": F.lit(None).cast(first.schema["_order"].dataType),
                                                 "_seen_payload": F.lit(None).cast("string")}).transform(_with_replaces)
        new_events = classified.transform(D.filter_new_events)
        late_copies = classified.transform(D.filter_late_copies).drop("_replaces")
        identity_duplicates = (in_batch_copies.unionByName(late_copies, allowMissingColumns=True)
                               .unionByName(recent_copies, allowMissingColumns=True))
        conflicting = identity_duplicates.filter(~F.col("_kept_payload").eqNullSafe(F.col("payload_sha256")))

        usage_new = new_events.filter(F.col("event_type") == "usage")
        account = select_for(new_events.filter(F.col("event_type") != "usage"), ACCOUNT, "_replaces")
        usage_cols = spec(USAGE).column_names
        unruled = usage_new.filter(F.col("_rule").isNull()).select(*usage_cols, "_replaces")
        rule_new = usage_new.filter(F.col("_rule").isNotNull()).transform(D.with_kafka_order)
        if not profile["rule"]:
            return SilverPlan(
                quarantine=quarantine, usage=unruled, account=account,
                duplicates=select_for(conflicting.withColumn("_update", F.lit(False)), DUPLICATES, "_update"),
                usage_deletes=unruled.select(*COORDINATES).limit(0), revived=unruled.select(*COORDINATES).limit(0),
                identity_duplicates=identity_duplicates,
                decided=rule_new.withColumns({"_decision": F.lit(D.KEPT), "rule": F.lit(None).cast("string")}).limit(0),
                unruled=unruled, own=own,
            )

        stored = (self._rule_history(spark, rule_new, own, span)
                  .withColumn("_stored_kept", F.col("_in") == IN_USAGE)
                  .transform(D.with_kafka_order)
                  .transform(D.filter_retry_candidates(rules))
                  .localCheckpoint())
        decided = (
            stored.select(*usage_cols, "_rule")
            .unionByName(rule_new.select(*usage_cols, "_rule"))
            .transform(D.with_kafka_order).transform(D.with_copy_rank).transform(D.filter_first_copies)
            .transform(D.apply_dedup_rules(rules))
        )
        # Where each decided event is stored now (a crash between two writes of a correction
        # can leave it in both tables), so that only what changes is written.
        placed = stored.groupBy(*COORDINATES).agg(
            F.max(F.col("_in") == IN_USAGE).alias("_in_usage"),
            F.max(F.col("_in") == IN_DUPLICATES).alias("_in_duplicates"),
            F.max_by("duplicate_of", F.col("_in") == IN_DUPLICATES).alias("_stored_duplicate_of"))
        placed_decisions = (
            decided.join(placed, on=COORDINATES, how="left")
            .join(rule_new.select(*COORDINATES, "_replaces"), on=COORDINATES, how="left")
            .withColumns({"_in_usage": F.coalesce("_in_usage", F.lit(False)),
                          "_in_duplicates": F.coalesce("_in_duplicates", F.lit(False)),
                          "_replaces": F.coalesce("_replaces", F.lit(False))})
        ).localCheckpoint()   # the decisions and their placement in one job
        kept, dropped = D.filter_kept(placed_decisions), D.filter_dropped(placed_decisions)
        usage = unruled.unionByName(kept.filter(~F.col("_in_usage")).select(*usage_cols, "_replaces"))
        changed_drop = ~F.col("_in_duplicates") | ~F.col("_stored_duplicate_of").eqNullSafe(F.col("duplicate_of"))
        duplicates = (
            select_for(conflicting.withColumn("_update", F.lit(False)), DUPLICATES, "_update")
            .unionByName(select_for(dropped.filter(changed_drop).withColumn("_update", F.col("_in_duplicates")),
                                    DUPLICATES, "_update"))
        )
        return SilverPlan(
            quarantine=quarantine, usage=usage, account=account, duplicates=duplicates,
            usage_deletes=dropped.filter(F.col("_in_usage")).select(*COORDINATES),
            revived=kept.filter(F.col("_in_duplicates")).select(*COORDINATES),
            identity_duplicates=identity_duplicates, decided=placed_decisions, unruled=unruled, own=own,
        )

    # -- writes, in the crash-safe order ----------------------------------------------------
    def _write(self, spark: SparkSession, plan: SilverPlan, batch: DataFrame, who: BatchWrite) -> None:
        sizes = self._sizes(plan, batch)
        txn = (who, plan.own)
        record = self._batch_record(spark, who.query_id, who.batch_id, sizes)
        corrections = any(sizes[k] for k in ("usage_deletes", "revived", "duplicate_updates",
                                             "usage_replaces", "account_replaces"))
        if not corrections:
            # The steady state: appends only, to different tables, so they commit side by side.
            # A replay after a crash part-way adds exactly what is missing (BatchWrite).
            writes = [(rows, table) for rows, table, size in (
                (plan.quarantine, QUARANTINE, sizes["quarantine"]), (plan.duplicates, DUPLICATES, sizes["duplicates"]),
                (plan.account, ACCOUNT, sizes["account"])) if size]
            calls = [lambda rows=rows, table=table: self._append(spark, rows, table, txn) for rows, table in writes]
            if sizes["usage"]:
                calls.append(lambda: self._write_usage(spark, plan.usage, txn))
            _run_together([*calls, lambda: self._append(spark, record, BATCHES, txn)])
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
        self._append(spark, record, BATCHES, txn)

    def _sizes(self, plan: SilverPlan, batch: DataFrame) -> dict:
        """Every count the batch needs, in one job: which path each table takes (appends, or
        the MERGEs of the correction path), which writes are empty, and the batch record.

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
            ("kept_by_rules", D.filter_kept(plan.decided), no, no),
            ("rows_in", copies, F.col("_problem").isNull() & F.col("is_late"), no),
            ("quarantined", filter_bad(copies), no, F.col("_problem.reason")),
            ("rule_drops", D.filter_dropped(plan.decided), no, F.col("rule")),
        ]
        tagged = None
        for tag, rows, flag, key in outputs:
            part = rows.select(F.lit(tag).alias("_t"), flag.cast("boolean").alias("_f"), key.cast("string").alias("_k"))
            tagged = part if tagged is None else tagged.unionByName(part)
        counts = tagged.groupBy("_t", "_k").agg(F.count(F.lit(1)).alias("n"), F.count(F.when(F.col("_f"), 1)).alias("nf"))
        columns = []
        for tag, _, _, key in outputs:
            mine = F.col("_t") == tag
            if tag in ("quarantined", "rule_drops"):
                columns.append(F.map_from_entries(F.collect_list(F.when(mine, F.struct("_k", "n")))).alias(tag))
            else:
                columns.append(F.coalesce(F.sum(F.when(mine, F.col("n"))), F.lit(0)).alias(tag))
                columns.append(F.coalesce(F.sum(F.when(mine, F.col("nf"))), F.lit(0)).alias(f"{tag}_flagged"))
        sizes = counts.agg(*columns).first().asDict()
        # plan.quarantine holds exactly the bad copies counted by reason.
        return {**sizes, "quarantine": sum(sizes["quarantined"].values()), "usage_replaces": sizes["usage_flagged"], "account_replaces": sizes["account_flagged"],
                "duplicate_updates": sizes["duplicates_flagged"], "late_events": sizes["rows_in_flagged"]}

    @staticmethod
    def _batch_record(spark: SparkSession, query_id: str, batch_id: int, sizes: dict) -> DataFrame:
        # Kept usage: new events without a rule and every event the rules (re)decided as kept.
        values = {
            "query_id": query_id, "batch_id": batch_id, "rows_in": sizes["rows_in"],
            "quarantined": sizes["quarantined"], "identity_duplicates": sizes["identity_duplicates"],
            "rule_drops": sizes["rule_drops"], "late_events": sizes["late_events"],
            "usage_events": sizes["kept_by_rules"] + sizes["unruled"], "account_events": sizes["account"],
        }
        schema = spec(BATCHES).struct_type()
        return (spark.createDataFrame([tuple(values.get(f.name) for f in schema.fields)], schema)
                .withColumn("processed_at", F.current_timestamp()))

    def _append(self, spark: SparkSession, rows: DataFrame, table: str, txn: tuple) -> None:
        """An append a replayed batch cannot double (BatchWrite)."""
        who, own = txn
        if who.may_replay and not who.txn:
            if table == BATCHES:
                key, mine = ["query_id", "batch_id"], (F.col("query_id") == who.query_id) & (F.col("batch_id") == who.batch_id)
            else:
                key, mine = COORDINATES, _inside(own)
            # File statistics on the coordinates skip every file but the batch's own.
            rows = rows.join(self.lake.read(spark, table).filter(mine).select(*key), on=key, how="left_anti")
        writer = rows.select(*spec(table).column_names).write.format("delta").mode("append")
        if who.txn:
            writer = writer.option("txnAppId", who.query_id).option("txnVersion", who.batch_id)
        if table == BATCHES:   # a lake made before a count was added gains its column
            writer = writer.option("mergeSchema", "true")
        self.lake.save(writer, table)

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


def _scope_end() -> Column:
    """A rule scope's end; an open one (a retry chain runs forward) ends where stored events
    can: the future tolerance ahead of now."""
    return F.coalesce(F.col("_scope_end"), F.current_timestamp() + F.expr(f"INTERVAL {_FUTURE_DAYS} DAYS"))


def _with_replaces(df: DataFrame) -> DataFrame:
    """_replaces: the row is an earlier copy (Kafka order) than the one silver holds."""
    return df.withColumn("_replaces", F.coalesce(F.col("_order") < F.col("_seen_order"), F.lit(False)))


def _inside(ranges: list[tuple]) -> Column:
    """Rows within the given (topic, partition, first offset, last offset) ranges."""
    inside = F.lit(False)
    for topic, partition, first, last in ranges:
        inside = inside | ((F.col("kafka_topic") == topic) & (F.col("kafka_partition") == partition)
                           & F.col("kafka_offset").between(first, last))
    return inside


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
