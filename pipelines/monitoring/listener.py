"""Every micro-batch of every stream -> one row of ops.stream_metrics.

The listener's callbacks run on Spark's listener bus; they only parse the progress JSON
and queue it. The runner's driver loop calls `StreamMonitor.flush()` between polls, `settle()`
when a query ends, and the monitor writes at exit: that is where the rows get enriched
(silver's per-batch dedup and quarantine counts from ops.silver_batches, freshness of each
stream's output tables) and appended, each (query_id, run_id, batch_id) once.
"""
from __future__ import annotations

import json
import logging
import queue
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pyspark import SparkContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from pipelines.core.tables import (ACCOUNT_EVENTS, BRONZE_EVENTS, DAILY_USAGE, SILVER_BATCHES, STREAM_METRICS,
                                   USAGE_EVENTS, Lake, spec)

log = logging.getLogger(__name__)

# Continuous mode: between flushes the rows wait in memory; one write per interval, not
# per micro-batch, keeps the monitor's Delta commits off the streams' back.
FLUSH_SECONDS = 5.0

# Where each stream writes, and which columns say how far in event and ingestion time it got.
OUTPUTS: dict[str, list[tuple[str, str, str]]] = {
    "bronze": [(BRONZE_EVENTS, "kafka_timestamp", "ingested_at")],
    "silver": [(USAGE_EVENTS, "occurred_at", "ingested_at"),
               (ACCOUNT_EVENTS, "occurred_at", "ingested_at")],
    "gold": [(DAILY_USAGE, "CAST(usage_date AS timestamp)", "last_ingested_at")],
}


def _ts(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _offsets(value) -> dict | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def kafka_lag(sources: list[dict]) -> int | None:
    """Records between each Kafka source's end offsets and the latest offsets the source
    saw, summed over topics and partitions; None when no source is Kafka."""
    total, found = 0, False
    for source in sources or []:
        if "Kafka" not in str(source.get("description", "")):
            continue
        end, latest = _offsets(source.get("endOffset")), _offsets(source.get("latestOffset"))
        if end is None or latest is None:
            continue
        found = True
        for topic, partitions in latest.items():
            for partition, offset in partitions.items():
                total += max(int(offset) - int(end.get(topic, {}).get(partition, 0)), 0)
    return total if found else None


def progress_row(p: dict, *, mode: str) -> dict:
    """One StreamingQueryProgress (as parsed JSON) -> the listener's part of a metrics row."""
    ops = p.get("stateOperators") or []
    watermark = (p.get("eventTime") or {}).get("watermark")
    return {
        "query_name": p.get("name") or p["id"],
        "query_id": p["id"],
        "run_id": p["runId"],
        "batch_id": int(p["batchId"]),
        "mode": mode,
        "batch_started_at": _ts(p.get("timestamp")),
        "input_rows": int(p.get("numInputRows") or 0),
        "input_rows_per_second": _seconds_or_rate(p.get("inputRowsPerSecond") or 0),
        "processed_rows_per_second": _seconds_or_rate(p.get("processedRowsPerSecond") or 0),
        "batch_duration_ms": int((p.get("durationMs") or {}).get("triggerExecution") or 0),
        # Spark reports epoch 0 when no row has set a watermark yet.
        "watermark": None if not watermark or watermark.startswith("1970-01-01") else _ts(watermark),
        "state_rows": sum(int(op.get("numRowsTotal") or 0) for op in ops) if ops else None,
        "state_memory_bytes": sum(int(op.get("memoryUsedBytes") or 0) for op in ops) if ops else None,
        "hot_path_duplicates": sum(int((op.get("customMetrics") or {}).get("numDroppedDuplicateRows") or 0)
                                   for op in ops) if ops else None,
        "kafka_lag": kafka_lag(p.get("sources") or []),
    }


def _queue_progress(sink: "queue.Queue[dict]", read_json: Callable[[], str]) -> None:
    """Queue the parsed progress JSON that `read_json` returns; reading it (a JVM call) and
    parsing it are both guarded."""
    try:
        sink.put(json.loads(read_json()))
    except Exception:  # noqa: BLE001 - a monitoring hiccup must never fail the stream
        log.exception("stream monitor: could not read a progress event")


class _ProgressBridge:
    """What Spark's listener bus calls through Py4J: each progress event's JSON, queued.

    Why not PySpark's own bridge: it turns every event into Python objects field by field
    before a listener sees it, a JVM round trip per field, and every Java collection it
    walks ends in a Java exception that PySpark (and Delta's hook) convert to a Python one,
    the exception's stack trace rendered as text included: about 420 round trips and ten
    exceptions per progress event, 25 ms of the driver's Python CPU and more of the JVM's,
    on the cores the streams share (bench/RESULTS.md, "The stream monitor's progress
    events"). The monitor reads only the JSON: two round trips."""

    def __init__(self, sink: "queue.Queue[dict]"):
        self.sink = sink

    def onQueryStarted(self, jevent) -> None:
        pass

    def onQueryProgress(self, jevent) -> None:
        _queue_progress(self.sink, lambda: jevent.progress().json())

    def onQueryIdle(self, jevent) -> None:
        pass

    def onQueryTerminated(self, jevent) -> None:
        pass

    class Java:
        implements = ["org.apache.spark.sql.streaming.PythonStreamingQueryListener"]


class _Listener(StreamingQueryListener):
    """Registered with `spark.streams.addListener`. On a classic session Spark calls the
    light `_ProgressBridge` (`_jlistener`, the object addListener hands the JVM). A Spark
    Connect session never asks for `_jlistener`, and calls these methods with PySpark's
    events; so would a PySpark that stopped asking for it: slower, never wrong."""

    def __init__(self, sink: "queue.Queue[dict]"):
        self.sink = sink

    @property
    def _jlistener(self):
        if "_jbridge" not in self.__dict__:
            wrapper = SparkContext._jvm.org.apache.spark.sql.streaming.PythonStreamingQueryListenerWrapper
            self._jbridge = wrapper(_ProgressBridge(self.sink))
        return self._jbridge

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        _queue_progress(self.sink, lambda: event.progress.json)

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        pass


def with_silver_counts(rows: DataFrame, batches: DataFrame) -> DataFrame:
    """Silver rows get their batch's drops per rule (identity included) and quarantine
    counts from ops.silver_batches; other streams' rows keep nulls."""
    counts = batches.select(
        "query_id", "batch_id",
        F.map_concat(F.map_from_arrays(F.array(F.lit("identity")), F.array(F.col("identity_duplicates"))),
                     F.coalesce("rule_drops", F.create_map().cast("map<string,bigint>"))).alias("rule_drops"),
        F.coalesce("quarantined", F.create_map().cast("map<string,bigint>")).alias("quarantined"),
    )
    return rows.join(counts, on=["query_id", "batch_id"], how="left")


class StreamMonitor:
    """Installs the listener; `flush()` (driver main thread) writes what it queued."""

    def __init__(self, spark: SparkSession, lake: Lake, *, continuous: bool):
        self.spark, self.lake = spark, lake
        self.mode = "continuous" if continuous else "available_now"
        self._queue: queue.Queue[dict] = queue.Queue()
        self._listener = _Listener(self._queue)
        self.recorded: set[tuple[str, str, int]] = set()
        self._last_flush = 0.0
        self._held: list[dict] = []   # progress of stopped queries, not written yet
        self._app_id, self._writes = f"stream-monitor-{uuid.uuid4()}", 0
        # (table, event column, ingestion column) -> the newest (event, ingestion) time seen.
        self._newest: dict[tuple[str, str, str], tuple] = {}

    def __enter__(self) -> "StreamMonitor":
        self.lake.ensure(self.spark, STREAM_METRICS)
        self.spark.streams.addListener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.flush(force=True)
        finally:
            self.spark.streams.removeListener(self._listener)

    def _drain(self) -> list[dict]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def settle(self, query: StreamingQuery) -> None:
        """After a query stopped: its last progress events may still be on the listener
        bus, but the query's own recentProgress already holds them, so they are taken from
        there instead of waited for. Only for batches the bus has not delivered: the bus's
        copy is the one to keep, as pyspark's recentProgress can lack a Kafka source's
        latest offsets (no lag). A continuous run writes them at once; an availableNow run
        keeps them for one write when the whole run ends."""
        pending = self._drain()
        known = self.recorded | {_key(p) for p in pending + self._held}
        self._held += pending + [p for p in query.recentProgress if _key(p) not in known]
        if self.mode == "continuous":
            self._write(self._take_held())

    def flush(self, *, force: bool = False) -> int:
        """Write what the listener queued, at most once per FLUSH_SECONDS unless forced.

        An availableNow run writes once, when it ends: its streams run one after the
        other, and a write plus freshness scans every few seconds, or after every stream,
        would compete for the same cores with the streams they measure."""
        if not force and (self.mode == "available_now" or time.monotonic() - self._last_flush < FLUSH_SECONDS):
            return 0
        self._last_flush = time.monotonic()
        return self._write(self._take_held())

    def _take_held(self) -> list[dict]:
        held, self._held = self._held + self._drain(), []
        return held

    def _freshness(self, names: set[str]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        for name in names:
            newest_event, newest_ingest = None, None
            for output in OUTPUTS.get(name, []):
                if not self.lake.exists(self.spark, output[0]):
                    continue
                event, ingest = self._newest_in(output)
                newest_event = max(filter(None, [newest_event, event]), default=None)
                newest_ingest = max(filter(None, [newest_ingest, ingest]), default=None)
            out[name] = (newest_event, newest_ingest)
        return out

    def _newest_in(self, output: tuple[str, str, str]) -> tuple:
        """The newest event and ingestion time written to an output table, as far as this
        monitor has seen: the newest ever written, even if a correction deleted that row since.

        One aggregate, one small row to the driver. Only the first reads the whole table; the
        next ones ask only for rows newer than what was seen, so Delta's file statistics (or
        the table's partitions) skip every file written before, and a flush every few
        seconds costs what was written since, not the table's history (design section 8)."""
        table, event_col, ingest_col = output
        event, ingest = F.expr(event_col), F.col(ingest_col)
        seen = self._newest.get(output, (None, None))
        rows = self.lake.read(self.spark, table)
        both = [F.max(event).alias("e"), F.max(ingest).alias("i")]
        if seen[0] is None or seen[1] is None:
            row = rows.agg(*both).first()
        else:
            # Delta keeps timestamp statistics to the millisecond and skips with a millisecond
            # of margin, so only "newer by more than a millisecond" lets it skip the file
            # holding what was seen; a row newer by less is found with the next one after it.
            newer = [col > F.lit(at + _STATS_GRAIN) for col, at in ((event, seen[0]), (ingest, seen[1]))]
            if any(re.search(rf"\b{p}\b", event_col) for p in spec(table).partitioned_by):
                # Delta cannot skip by an OR of a partition expression (gold's day) and a
                # column's statistics: one filtered scan per column instead.
                row = (rows.filter(newer[0]).agg(both[0])).crossJoin(rows.filter(newer[1]).agg(both[1])).first()
            else:
                row = rows.filter(newer[0] | newer[1]).agg(*both).first()
        newest = tuple(max(filter(None, [old, new]), default=None) for old, new in zip(seen, (row["e"], row["i"])))
        self._newest[output] = newest
        return newest

    def _write(self, progress: list[dict]) -> int:
        try:
            return self._append(progress)
        except Exception:
            self._held = progress + self._held   # nothing lost: tried again at the next write
            raise

    def _append(self, progress: list[dict]) -> int:
        rows = {}
        for p in progress:
            if (key := _key(p)) not in self.recorded:
                rows[key] = progress_row(p, mode=self.mode)
        if not rows:
            return 0
        now = datetime.now(UTC)
        fresh = self._freshness({r["query_name"] for r in rows.values()})
        for row in rows.values():
            event, ingest = fresh.get(row["query_name"], (None, None))
            row.update(recorded_at=now, newest_event_time=event, newest_ingested_at=ingest,
                       event_freshness_seconds=_age(now, event), ingestion_freshness_seconds=_age(now, ingest))
        schema = spec(STREAM_METRICS).struct_type()
        listener_cols = [f for f in schema if f.name not in ("rule_drops", "quarantined")]
        frame = self.spark.createDataFrame([tuple(r.get(f.name) for f in listener_cols) for r in rows.values()],
                                           type(schema)(listener_cols))
        batches = (self.lake.read(self.spark, SILVER_BATCHES) if self.lake.exists(self.spark, SILVER_BATCHES)
                   else self.spark.createDataFrame([], spec(SILVER_BATCHES).struct_type()))
        if silver_keys := [(r["query_id"], r["batch_id"]) for r in rows.values() if r["query_name"] == "silver"]:
            # As literals, so the file statistics on query_id and batch_id skip every other
            # batch's record: the join below then reads what this write needs, not the table.
            ids = [b for _, b in silver_keys]
            batches = batches.filter(F.col("query_id").isin(sorted({q for q, _ in silver_keys}))
                                     & F.col("batch_id").between(min(ids), max(ids)))
        silver = frame.filter(F.col("query_name") == "silver").transform(lambda df: with_silver_counts(df, batches))
        others = frame.filter(F.col("query_name") != "silver").withColumns({
            "rule_drops": F.lit(None).cast("map<string,bigint>"), "quarantined": F.lit(None).cast("map<string,bigint>")})
        source = silver.unionByName(others).select(*[F.col(f.name).cast(f.dataType) for f in schema])
        # A batch's key holds its run id, which is new at every start, so no other process
        # records the same key; within this one, `recorded` and Delta's idempotent-append
        # options keep every row single without the cost of a MERGE: a write that failed
        # after its commit is retried under the same version and skipped.
        version = self._writes + 1
        self.lake.save(source.write.format("delta").mode("append").option("txnAppId", self._app_id)
                       .option("txnVersion", version), STREAM_METRICS)
        self._writes = version
        self.recorded |= set(rows)
        return len(rows)


def _key(p: dict) -> tuple[str, str, int]:
    return p["id"], p["runId"], int(p["batchId"])


_MILLIS = Decimal("0.001")
_STATS_GRAIN = timedelta(milliseconds=1)


def _seconds_or_rate(value) -> Decimal:
    # Stored as decimal(18,3): the lakehouse keeps no floats, and a millisecond (or a
    # thousandth of a row per second) is finer than anything the SLOs look at.
    return Decimal(str(value)).quantize(_MILLIS)


def _age(now: datetime, then: datetime | None) -> Decimal | None:
    if then is None:
        return None
    if then.tzinfo is None:  # Spark hands back naive local-time datetimes
        then = then.astimezone(UTC)
    return _seconds_or_rate((now - then).total_seconds())
