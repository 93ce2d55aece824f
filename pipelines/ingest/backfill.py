"""Backfill: replay a bronze offset or time range into silver and gold.

Bronze keeps every Kafka record, so anything silver or gold lost (a bad deploy, a table
restored from an old version, a deleted range) can be rebuilt from it. The replay reads
the range as a static slice and hands it to the silver job's own batch function
(`SilverBatchWriter.write_batch`, after the same parse and hot-path dedup), so identity
and custom-rule dedup are exactly the stream's: the slice is checked against silver
history, rules are recomputed over every key it touches, every write is a MERGE.

Safe to run twice, and a no-op over a range silver already holds: records already
accounted for in silver (their copy is in a silver table, or they are byte-identical
re-sends of an event silver kept) are set aside before anything is written, so a range
that was fully processed writes nothing and no table gets a new version. Gold's daily
usage is then recomputed from silver for every day the range touches and only rows that
differ are merged.

Replay a lost range whole: dedup picks the first copy in Kafka order among the copies it
can see, so a range that cuts between two copies of one lost event keeps the later one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipelines.core.context import JobContext
from pipelines.core.tables import (ACCOUNT_EVENTS, BRONZE_EVENTS, COORDINATES, DAILY_USAGE, DUPLICATES, QUARANTINE,
                                   USAGE_EVENTS)
from pipelines.ingest import dedup as D
from pipelines.ingest import silver as S
from pipelines.ingest.gold import (DAILY_KEYS, aggregate_daily_usage, merge_daily_usage, touched_daily_keys,
                                   with_recomputed_totals)
from pipelines.ingest.parse import filter_good

# Silver tables where a bronze record can leave a trace, by its Kafka coordinates.
TRACED_IN = (USAGE_EVENTS, ACCOUNT_EVENTS, DUPLICATES, QUARANTINE)
# Kept copies: a byte-identical re-send of one of these is only ever counted, never stored.
KEPT_IN = (USAGE_EVENTS, ACCOUNT_EVENTS, DUPLICATES)
_DAILY_VALUES = ["quantity", "event_count", "last_ingested_at"]


class BackfillError(ValueError):
    pass


@dataclass(frozen=True)
class BronzeRange:
    """Which bronze records to replay. Offsets and times are half-open: [from, to)."""

    topic: str | None = None
    partitions: tuple[int, ...] = ()
    from_offset: int | None = None
    to_offset: int | None = None
    from_time: datetime | None = None     # Kafka timestamp (broker append time), UTC
    to_time: datetime | None = None

    def __post_init__(self):
        if self.from_offset is None and self.to_offset is None and self.from_time is None and self.to_time is None:
            raise BackfillError("backfill range: give an offset range (from_offset/to_offset) or a time range "
                                "(from_time/to_time); replaying all of bronze must be asked for explicitly "
                                "with from_offset=0")
        if (self.from_offset is not None or self.to_offset is not None) and self.topic is None:
            raise BackfillError("backfill range: offsets are per topic partition; name the topic (and the "
                                "partitions, or none to apply the offsets to every partition)")
        for name in ("from_offset", "to_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise BackfillError(f"backfill range: {name} must be >= 0, got {value}")
        if self.from_offset is not None and self.to_offset is not None and self.to_offset <= self.from_offset:
            raise BackfillError(f"backfill range: to_offset {self.to_offset} must be above from_offset {self.from_offset}")
        if self.from_time is not None and self.to_time is not None and self.to_time <= self.from_time:
            raise BackfillError(f"backfill range: to_time {self.to_time.isoformat()} must be after from_time "
                                f"{self.from_time.isoformat()}")
        if any(p < 0 for p in self.partitions):
            raise BackfillError(f"backfill range: partitions must be >= 0, got {list(self.partitions)}")

    @classmethod
    def from_params(cls, params: Mapping[str, str | None]) -> "BronzeRange":
        """Notebook widgets / job parameters (all strings, empty = not set) -> a range."""
        known = {"topic", "partition", "from_offset", "to_offset", "from_time", "to_time"}
        unknown = sorted(set(k for k, v in params.items() if v not in (None, "")) - known)
        if unknown:
            raise BackfillError(f"backfill parameters: unknown {unknown}; known: {sorted(known)}")

        def text(name):
            value = params.get(name)
            return value.strip() if isinstance(value, str) and value.strip() else None

        def integer(name):
            value = text(name)
            try:
                return None if value is None else int(value)
            except ValueError:
                raise BackfillError(f"backfill parameter {name}: expected an integer, got {value!r}") from None

        def timestamp(name):
            value = text(name)
            if value is None:
                return None
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise BackfillError(f"backfill parameter {name}: expected an ISO 8601 time such as "
                                    f"2026-10-01T00:00:00Z, got {value!r}") from None
            if parsed.tzinfo is None:
                raise BackfillError(f"backfill parameter {name}: give a UTC offset or Z, got {value!r}")
            return parsed.astimezone(timezone.utc)

        try:
            partitions = tuple(int(p) for p in text("partition").split(",")) if text("partition") else ()
        except ValueError:
            raise BackfillError(f"backfill parameter partition: expected integers separated by commas, "
                                f"got {text('partition')!r}") from None
        return cls(topic=text("topic"), partitions=partitions, from_offset=integer("from_offset"),
                   to_offset=integer("to_offset"), from_time=timestamp("from_time"), to_time=timestamp("to_time"))

    def describe(self) -> str:
        parts = [f"topic {self.topic}" if self.topic else "every topic"]
        if self.partitions:
            parts.append(f"partition {','.join(map(str, self.partitions))}")
        if self.from_offset is not None or self.to_offset is not None:
            parts.append(f"offsets [{self.from_offset if self.from_offset is not None else 0}, "
                         f"{self.to_offset if self.to_offset is not None else 'end'})")
        if self.from_time is not None or self.to_time is not None:
            parts.append(f"kafka time [{self.from_time.isoformat() if self.from_time else 'start'}, "
                         f"{self.to_time.isoformat() if self.to_time else 'end'})")
        return ", ".join(parts)

    def key(self) -> str:
        """Stable id of the range: names the backfill's writes in ops.silver_batches."""
        return "backfill-" + hashlib.sha256(self.describe().encode()).hexdigest()[:16]


# -- pure transforms ------------------------------------------------------------------------
def filter_bronze_range(r: BronzeRange):
    """bronze.events rows -> those inside the range."""

    def transform(bronze: DataFrame) -> DataFrame:
        cond = F.lit(True)
        if r.topic is not None:
            cond &= F.col("topic") == r.topic
        if r.partitions:
            cond &= F.col("partition").isin(list(r.partitions))
        if r.from_offset is not None:
            cond &= F.col("offset") >= r.from_offset
        if r.to_offset is not None:
            cond &= F.col("offset") < r.to_offset
        if r.from_time is not None:
            cond &= F.col("kafka_timestamp") >= F.lit(r.from_time).cast("timestamp")
        if r.to_time is not None:
            cond &= F.col("kafka_timestamp") < F.lit(r.to_time).cast("timestamp")
        return bronze.filter(cond)

    return transform


def filter_unaccounted(traced: DataFrame, kept: DataFrame):
    """silver_input rows -> the ones silver has no trace of.

    traced: Kafka coordinates present in a silver table. kept: (account_id, event_id,
    payload_sha256) of the copies silver kept; a byte-identical re-send of one is only
    counted by the stream, never stored, so it is accounted for too.
    """

    def transform(df: DataFrame) -> DataFrame:
        untraced = df.join(traced, on=COORDINATES, how="left_anti")
        resends = untraced.transform(filter_good).join(kept, on=[*D.IDENTITY, "payload_sha256"], how="left_semi")
        return untraced.join(resends.select(*COORDINATES), on=COORDINATES, how="left_anti")

    return transform


def drop_identical_copies(df: DataFrame) -> DataFrame:
    """The stream's hot path for a static slice (dropDuplicatesWithinWatermark is for
    streams only): one row per (identity, payload hash), the first in Kafka order, which
    is what the stream keeps when the copies meet in different micro-batches (inside one,
    it keeps whichever its shuffle meets first; the copies are byte-identical)."""
    copy = Window.partitionBy("_identity", F.coalesce("payload_sha256", F.lit(""))).orderBy(*D.ORDER_COLUMNS)
    return df.withColumn("_copy", F.row_number().over(copy)).filter(F.col("_copy") == 1).drop("_copy")


def filter_changed_daily(existing: DataFrame):
    """Recomputed daily rows (null totals = the day is gone) -> only those that differ from
    gold, so a recompute that finds nothing new writes nothing."""

    def transform(recomputed: DataFrame) -> DataFrame:
        same = F.lit(True)
        for c in _DAILY_VALUES:
            same &= F.col(f"r.{c}").eqNullSafe(F.col(f"e.{c}"))
        # Null-safe keys, as gold's MERGE matches them (a product may be null).
        on = [F.col(f"r.{k}").eqNullSafe(F.col(f"e.{k}")) for k in DAILY_KEYS]
        joined = recomputed.alias("r").join(existing.alias("e"), on=on, how="left")
        gone_and_absent = F.col("r.event_count").isNull() & F.col("e.event_count").isNull()
        return (joined.filter(~same & ~gone_and_absent)
                .select(*[F.col(f"r.{c}") for c in DAILY_KEYS], *[F.col(f"r.{c}") for c in _DAILY_VALUES]))

    return transform


# -- IO -----------------------------------------------------------------------------------
@dataclass
class BackfillResult:
    range: str
    records_in_range: int = 0
    already_in_silver: int = 0
    replayed: int = 0
    silver_versions: dict[str, tuple[int, int]] = field(default_factory=dict)
    days_recomputed: int = 0
    daily_rows_changed: int = 0

    @property
    def changed_tables(self) -> list[str]:
        changed = [t for t, (a, b) in self.silver_versions.items() if b != a]
        return changed + ([DAILY_USAGE] if self.daily_rows_changed else [])

    def render(self) -> str:
        return "\n".join([
            f"backfill: {self.range}",
            f"  bronze records in range   {self.records_in_range:>10,}",
            f"  already in silver         {self.already_in_silver:>10,}",
            f"  replayed through silver   {self.replayed:>10,}",
            f"  gold days recomputed      {self.days_recomputed:>10,}  ({self.daily_rows_changed:,} rows changed)",
            f"  tables changed            {', '.join(self.changed_tables) or 'none'}",
        ])


def _version(spark: SparkSession, ctx: JobContext, name: str) -> int:
    return int(ctx.lake.delta(spark, name).history(1).select("version").first()[0])


def _silver_state(spark: SparkSession, ctx: JobContext) -> tuple[DataFrame, DataFrame]:
    lake = ctx.lake
    traced = None
    for table in TRACED_IN:
        part = lake.read(spark, table).select(*COORDINATES)
        traced = part if traced is None else traced.unionByName(part)
    kept = None
    for table in KEPT_IN:
        part = lake.read(spark, table)
        if table == DUPLICATES:
            part = part.filter(F.col("rule") != D.IDENTITY_RULE)
        part = part.select(*D.IDENTITY, "payload_sha256")
        kept = part if kept is None else kept.unionByName(part)
    return traced.distinct(), kept.distinct()


def _recompute_daily(spark: SparkSession, ctx: JobContext, touched: DataFrame) -> tuple[int, int]:
    lake = ctx.lake
    touched = touched.localCheckpoint()
    try:
        days = touched.count()
        if not days:
            return 0, 0
        current = (
            lake.read(spark, USAGE_EVENTS)
            .join(F.broadcast(touched.withColumnRenamed("usage_date", "event_date")),
                  on=["account_id", "product", "metric", "event_date"], how="left_semi")
            .transform(aggregate_daily_usage)
        )
        changed = (
            touched.transform(with_recomputed_totals(current))
            .transform(filter_changed_daily(lake.read(spark, DAILY_USAGE)))
            .localCheckpoint()
        )
        rows = changed.count()
        if rows:
            merge_daily_usage(spark, lake, changed)
        return days, rows
    finally:
        touched.unpersist()


def run_backfill(spark: SparkSession, ctx: JobContext, bronze_range: BronzeRange, *,
                 log: Callable[[str], None] | None = None) -> BackfillResult:
    """Replay `bronze_range` into silver, then bring gold.daily_usage in line for its days."""
    say = log or (lambda _msg: None)
    lake = ctx.lake
    S.ensure_rule_state(spark, ctx)
    for table in (BRONZE_EVENTS, *S.TABLES, DAILY_USAGE):
        lake.ensure(spark, table)
    result = BackfillResult(range=bronze_range.describe())
    before = {t: _version(spark, ctx, t) for t in S.TABLES}

    slice_ = lake.read(spark, BRONZE_EVENTS).transform(filter_bronze_range(bronze_range)).localCheckpoint()
    try:
        # The only driver-side reads are counts (for the report and to skip empty writes).
        result.records_in_range = slice_.count()
        say(f"backfill: {result.records_in_range:,} bronze records in {result.range}")
        parsed = S.silver_input(slice_, ctx).localCheckpoint()
        traced, kept = _silver_state(spark, ctx)
        todo = parsed.transform(filter_unaccounted(traced, kept)).localCheckpoint()
        result.replayed = todo.count()
        result.already_in_silver = result.records_in_range - result.replayed
        if result.replayed:
            say(f"backfill: replaying {result.replayed:,} records silver has no trace of")
            todo = todo.transform(drop_identical_copies)
            # batch id = usage_events' version before the replay: a retry after a crash that
            # committed nothing reuses it (ops.silver_batches appends once), a retry after
            # partial commits replays only what is still missing under a new id.
            S.SilverBatchWriter(ctx, claims=False).write_batch(todo, before[USAGE_EVENTS], bronze_range.key())
        result.silver_versions = {t: (before[t], _version(spark, ctx, t)) for t in S.TABLES}

        # Gold: the days of the range's usage events as silver now holds them, plus every
        # day a silver change of this replay touched (a rule may have moved other events).
        slice_days = (lake.read(spark, USAGE_EVENTS)
                      .join(parsed.select(*COORDINATES), on=COORDINATES, how="left_semi")
                      .transform(touched_daily_keys))
        touched = slice_days
        start, end = result.silver_versions[USAGE_EVENTS]
        if end > start:
            changes = (spark.read.format("delta").option("readChangeFeed", "true")
                       .option("startingVersion", str(start + 1)).option("endingVersion", str(end)))
            touched = touched.unionByName(lake.load(changes, USAGE_EVENTS).transform(touched_daily_keys))
        result.days_recomputed, result.daily_rows_changed = _recompute_daily(spark, ctx, touched.distinct())
        parsed.unpersist()
        todo.unpersist()
    finally:
        slice_.unpersist()
    say(result.render())
    return result
