"""Notifications: the contract, the outbox and exactly-once delivery to Kafka.

Contract: schemas/notifications/v1.json (documented in docs/contracts.md). A notification's id is
deterministic, SHA-256 of `type|account_id|key` where the key names what triggered it
(an event id, or account/metric/period/threshold for a usage alert), so whoever computes
the same notification twice computes the same id.

Delivery goes through an outbox, the Delta table gold.notifications:

1. `stage_notifications` MERGEs new notifications in, insert-if-absent on the id: a
   rerun, a replayed micro-batch or a restart stages nothing twice. The outbox is partitioned
   into 16 account shards (the first hex digit of SHA-256 of the account), and the MERGE
   looks an id up only in the shards of the accounts it stages: a notify micro-batch reads
   the part of the outbox its accounts can touch, not the whole table (DESIGN section 8).
2. `publish_pending` sends the rows not yet published and then marks them. A crash between
   the send and the mark must not send them again, so before sending it reads back what is
   already on the topic since the oldest pending row was staged (every record carries its
   id in the `lakehouse-id` header) and marks those without resending. Sends happen in a
   Kafka transaction under one transactional id per topic: starting a publisher fences any
   other one still running (in another process), and aborted sends stay invisible to
   read_committed consumers, so two publishers can never both deliver the same row.

The same machinery (`Outbox`, `publish_outbox`) delivers the plan.changed events the plan
rules emit (pipelines/rules/plan_rules.py), from gold.plan_decisions to the events topic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Callable

from kafka import TopicPartition
from kafka.errors import KafkaError, ProducerFencedError
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.core import kafka_clients, kafka_topics
from pipelines.core.exact_json import dumps
from pipelines.core.settings import Settings
from pipelines.core.tables import NOTIFICATIONS, Lake, spec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ID_HEADER = "lakehouse-id"
STAGE_COLUMNS = ["notification_id", "type", "account_id", "occurred_at", "trigger_event_ids", "payload"]
# Kafka timestamps are the broker's append time; the margin covers clock skew between the
# machine that staged a row and the broker, and nothing else, so the read-back stays short.
READBACK_MARGIN = timedelta(minutes=5)
READBACK_TIMEOUT_S = 60.0
# Rows published per round: the pending rows are read to the driver (the producer lives
# there), so each read is bounded; publish loops until nothing is pending.
MAX_ROWS_PER_ROUND = 5_000
TOPIC_PARTITIONS = 3
SHARD_COLUMN = "account_shard"


class NotificationError(ValueError):
    """Rows handed to stage_notifications break the contract; the message names one."""


class PublishError(RuntimeError):
    """Delivery to Kafka failed; nothing was marked published that is not on the topic."""


# --------------------------------------------------------------------------- ids


def notification_id(type_: str, account_id: str, key: str) -> str:
    """SHA-256 hex of `type|account_id|key`: the same trigger always gives the same id."""
    for name, value in (("type", type_), ("account_id", account_id), ("key", key)):
        if not isinstance(value, str) or not value:
            raise NotificationError(f"notification_id: {name} must be a non-empty string, got {value!r}")
    return hashlib.sha256(f"{type_}|{account_id}|{key}".encode("utf-8")).hexdigest()


def notification_id_col(type_: Column | str, account_id: Column | str, key: Column | str) -> Column:
    """The Spark form of notification_id (same digest for the same strings; null if any part is)."""
    parts = [F.col(c) if isinstance(c, str) else c for c in (type_, account_id, key)]
    any_null = parts[0].isNull() | parts[1].isNull() | parts[2].isNull()
    return F.when(~any_null, F.sha2(F.concat_ws("|", *parts), 256))


# --------------------------------------------------------------------------- rendering

_RFC3339 = "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'"


def render_notification(row: dict) -> bytes:
    """One outbox row (occurred_at already RFC 3339 text) -> the JSON value on the topic."""
    # Decimals in the payload stay exact: parsed as Decimal, written back as number text.
    payload = json.loads(row["payload"], parse_float=Decimal)
    body = {
        "notification_id": row["notification_id"],
        "schema_version": SCHEMA_VERSION,
        "type": row["type"],
        "account_id": row["account_id"],
        "occurred_at": row["occurred_at"],
        "trigger_event_ids": list(row["trigger_event_ids"] or []),
        "payload": payload,
    }
    return dumps(body).encode("utf-8")


# --------------------------------------------------------------------------- staging


def account_shard_col(account_id: Column | str) -> Column:
    """The outbox shard of an account: the first hex digit of SHA-256 of its id (16 shards).

    A function of the account alone, and the account is part of what a notification id
    hashes, so an id lives in one shard forever. SHA-256 and not one of Spark's own hashes:
    the shard must not change with the engine or version that computes it, or a restaged id
    would be looked for in the wrong shard and staged twice."""
    col = F.col(account_id) if isinstance(account_id, str) else account_id
    return F.substring(F.sha2(col, 256), 1, 1)


def with_contract_problem(df: DataFrame) -> DataFrame:
    """+ _problem: why the row cannot become a valid notification (null when it can)."""
    problem = (
        F.when(F.col("notification_id").isNull() | ~F.col("notification_id").rlike("^[0-9a-f]{64}$"),
               F.lit("notification_id must be 64 lower-case hex digits"))
        .when(F.col("type").isNull() | (F.length("type") == 0), F.lit("type is required"))
        .when(F.col("account_id").isNull() | (F.length("account_id") == 0), F.lit("account_id is required"))
        .when(F.length("account_id") > 64, F.lit("account_id is longer than 64 characters"))
        .when(F.col("occurred_at").isNull(), F.lit("occurred_at is required"))
        .when(F.col("trigger_event_ids").isNull(), F.lit("trigger_event_ids is required (may be empty)"))
        .when(F.col("payload").isNull() | ~F.ltrim(F.col("payload")).startswith("{")
              | F.expr("try_parse_json(payload)").isNull(), F.lit("payload must be a JSON object as text"))
    )
    return df.withColumn("_problem", problem)


def summarise_for_staging(df: DataFrame) -> DataFrame:
    """Staged columns -> one row: rows (how many), bad (one contract violation as
    notification_id, type, account_id, _problem; null when there is none) and shards (the
    outbox shards of the rows' accounts, at most 16)."""
    checked = df.transform(with_contract_problem)
    offending = F.struct("notification_id", "type", "account_id", "_problem")
    return checked.agg(F.count(F.lit(1)).alias("rows"),
                       F.first(F.when(F.col("_problem").isNotNull(), offending), ignorenulls=True).alias("bad"),
                       F.array_sort(F.collect_set(account_shard_col("account_id"))).alias("shards"))


def to_outbox_rows(df: DataFrame) -> DataFrame:
    """Staged columns -> gold.notifications rows, one per id (the first by occurred_at)."""
    first = F.row_number().over(Window.partitionBy("notification_id").orderBy("occurred_at", "type", "payload"))
    return (
        df.select(*STAGE_COLUMNS)
        .withColumn("_n", first).filter(F.col("_n") == 1).drop("_n")
        .withColumns({
            "schema_version": F.lit(SCHEMA_VERSION),
            "occurred_at": F.col("occurred_at").cast("timestamp"),
            "created_at": F.current_timestamp(),
            "published_at": F.lit(None).cast("timestamp"),
            SHARD_COLUMN: account_shard_col("account_id"),
        })
        .select(*spec(NOTIFICATIONS).column_names)
    )


def stage_notifications(spark: SparkSession, lake: Lake, df: DataFrame) -> int:
    """MERGE the notifications of df into the outbox, insert-if-absent on notification_id;
    returns how many were new. df: notification_id, type, account_id, occurred_at,
    trigger_event_ids (array of strings), payload (a JSON object as text)."""
    missing = [c for c in STAGE_COLUMNS if c not in df.columns]
    if missing:
        raise NotificationError(f"stage_notifications: missing columns {missing} (need {STAGE_COLUMNS})")
    ensure_outbox(spark, lake)
    rows = df.select(*STAGE_COLUMNS).localCheckpoint()
    try:
        # One job, one row: how many rows, and one offending row to name in the error.
        summary = rows.transform(summarise_for_staging).first()
        bad = summary["bad"]
        if bad is not None:
            raise NotificationError(
                f"stage_notifications: notification {bad['notification_id']!r} (type {bad['type']!r}, "
                f"account {bad['account_id']!r}) breaks schemas/notifications/v1.json: {bad['_problem']}")
        if not summary["rows"]:
            return 0
        source = rows.transform(to_outbox_rows)
        # The shards as literals: Delta skips a MERGE's target files by the part of its
        # condition that names the target alone, never by values that come from the source.
        in_shards = F.col(f"t.{SHARD_COLUMN}").isin(list(summary["shards"]))
        metrics = (
            lake.delta(spark, NOTIFICATIONS).alias("t")
            .merge(source.alias("s"), in_shards & (F.col("t.notification_id") == F.col("s.notification_id")))
            .whenNotMatchedInsertAll()
            .execute()
        )
        return _inserted(metrics)
    finally:
        rows.unpersist()


def ensure_outbox(spark: SparkSession, lake: Lake) -> None:
    """Create the outbox, or rewrite one made before its account shards into them (once per
    process and table; Lake.ensure_partitioned). Staging and marking are idempotent, so a
    writer that fails on the rewrite's commit stages and publishes again on its retry."""
    lake.ensure_partitioned(spark, NOTIFICATIONS, {SHARD_COLUMN: account_shard_col("account_id")})


def _inserted(metrics: DataFrame | None) -> int:
    # Delta returns one row of MERGE metrics (bounded driver read).
    row = metrics.first() if metrics is not None else None
    return int(row["num_inserted_rows"]) if row is not None else 0


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class Outbox:
    """A Delta table whose rows are each delivered once to a Kafka topic.

    `pending`: SQL condition of rows not delivered yet; `id_column`: the unique id that
    travels in the record header; `since_column`: a timestamp set when the row became
    pending (the read-back starts there); `select`: the columns `render` needs, as Spark
    expressions; `render`: row -> (key, value); `mark_column`: set to the publish time."""

    table: str
    topic: str
    id_column: str
    pending: str
    since_column: str
    select: tuple[Column, ...]
    render: Callable[[dict], tuple[bytes | None, bytes]]
    mark_column: str = "published_at"


def notifications_outbox(settings: Settings) -> Outbox:
    return Outbox(
        table=NOTIFICATIONS, topic=settings.notifications_topic, id_column="notification_id",
        pending="published_at IS NULL", since_column="created_at",
        select=(F.col("notification_id"), F.col("type"), F.col("account_id"),
                F.date_format("occurred_at", _RFC3339).alias("occurred_at"),
                F.col("trigger_event_ids"), F.col("payload")),
        render=lambda r: (r["account_id"].encode("utf-8"), render_notification(r)),
    )


def publish_pending(spark: SparkSession, lake: Lake, settings: Settings) -> int:
    """Send every unpublished notification to settings.notifications_topic exactly once,
    then mark it published; returns how many records this call sent."""
    return publish_outbox(spark, lake, settings, notifications_outbox(settings))


def publish_outbox(spark: SparkSession, lake: Lake, settings: Settings, outbox: Outbox) -> int:
    lake.ensure(spark, outbox.table)
    sent_total = 0
    while True:
        pending = (
            lake.read(spark, outbox.table).filter(outbox.pending)
            .select(*outbox.select, F.unix_millis(outbox.since_column).alias("_since_ms"))
            .orderBy("_since_ms", outbox.id_column)
            .limit(MAX_ROWS_PER_ROUND)
            .collect()  # bounded by MAX_ROWS_PER_ROUND: the Kafka producer runs on the driver
        )
        if not pending:
            return sent_total
        rows = [r.asDict() for r in pending]
        since_ms = min(r["_since_ms"] for r in rows) - int(READBACK_MARGIN.total_seconds() * 1000)
        sent_total += _publisher(settings, outbox.topic).deliver(rows, outbox, since_ms)
        _mark(spark, lake, outbox, [r[outbox.id_column] for r in rows])
        if len(rows) < MAX_ROWS_PER_ROUND:
            return sent_total


def _mark(spark: SparkSession, lake: Lake, outbox: Outbox, ids: list[str]) -> None:
    # Only rows still unmarked: a concurrent publisher's mark is left as it is. An UPDATE on
    # the ids as a literal set (at most MAX_ROWS_PER_ROUND of them) reads only the files
    # that still hold unmarked rows (their null counts say which), and runs two Spark jobs
    # where a MERGE from a frame of the ids runs about six.
    unmarked = F.col(outbox.id_column).isin(ids) & F.col(outbox.mark_column).isNull()
    lake.delta(spark, outbox.table).update(condition=unmarked, set={outbox.mark_column: F.current_timestamp()})


class _Publisher:
    """One transactional producer and one read_committed consumer per (brokers, topic) and
    process. Calls are serialised: the streams of one process share it."""

    def __init__(self, settings: Settings, topic: str):
        self.settings = settings
        self.topic = topic
        self.lock = threading.Lock()
        self.producer = None
        self.consumer = None
        self.topic_ready = False

    def _connect(self) -> None:
        servers = self.settings.bootstrap_servers
        try:
            if not self.topic_ready:
                self._ensure_topic()
            if self.producer is None:
                config = kafka_clients.producer_tuning(client_id="lakehouse-publish",
                                                       transactional_id=f"lakehouse-publish.{self.topic}",
                                                       enable_idempotence=True, linger_ms=0)
                producer = kafka_clients.new_producer(self.settings, **config)
                # Fences any earlier publisher of this topic and completes its transaction.
                producer.init_transactions()
                self.producer = producer
            if self.consumer is None:
                # Same protocol and credentials as the producer: a read-back that cannot log
                # in fails the publish, and nothing is marked published.
                self.consumer = kafka_clients.new_consumer(self.settings, client_id="lakehouse-readback",
                                                           isolation_level="read_committed")
        except KafkaError as exc:
            self.close()
            raise PublishError(f"cannot publish to {self.topic!r} at {servers}: {exc!r}; is the broker up "
                               "(locally: `make kafka-start`)?") from exc

    def _ensure_topic(self) -> None:
        try:
            kafka_topics.ensure_topics(self.settings, {self.topic: TOPIC_PARTITIONS})
        except Exception as exc:  # noqa: BLE001 - managed clusters may forbid topic admin; sending still works
            log.info("could not ensure topic %s (%s); relying on it existing", self.topic, exc)
        self.topic_ready = True

    def close(self) -> None:
        for client in (self.producer, self.consumer):
            if client is not None:
                try:
                    client.close(timeout=5) if client is self.producer else client.close()
                except Exception:  # noqa: BLE001 - closing a broken client
                    pass
        self.producer = self.consumer = None

    def deliver(self, rows: list[dict], outbox: Outbox, since_ms: int) -> int:
        with self.lock:
            for attempt in (1, 2):
                self._connect()
                try:
                    on_topic = self._ids_on_topic(since_ms, {r[outbox.id_column] for r in rows})
                    todo = [r for r in rows if r[outbox.id_column] not in on_topic]
                    if todo:
                        self._send(todo, outbox)
                    return len(todo)
                except ProducerFencedError as exc:
                    # Another publisher of this topic started after us; it has read back or
                    # sent what was committed. Start over once with a fresh producer.
                    self.close()
                    if attempt == 2:
                        raise PublishError(f"publishing to {self.topic!r}: fenced twice by another publisher "
                                           "of the same topic; retry later") from exc
                except (KafkaError, PublishError) as exc:
                    self.close()
                    if isinstance(exc, PublishError):
                        raise
                    raise PublishError(f"publishing to {self.topic!r} at {self.settings.bootstrap_servers} "
                                       f"failed: {exc!r}; nothing was marked published") from exc
        return 0  # unreachable

    def _send(self, rows: list[dict], outbox: Outbox) -> None:
        producer = self.producer
        producer.begin_transaction()
        failures: list[BaseException] = []
        try:
            for row in rows:
                key, value = outbox.render(row)
                future = producer.send(self.topic, key=key, value=value,
                                       headers=[(ID_HEADER, row[outbox.id_column].encode("utf-8"))])
                future.add_errback(failures.append)
            producer.flush()
            if failures:
                raise PublishError(f"{len(failures)} record(s) to {self.topic!r} were not acknowledged: "
                                   f"{failures[0]!r}")
            producer.commit_transaction()
        except BaseException:
            try:
                producer.abort_transaction()
            except Exception:  # noqa: BLE001 - fenced or broken; the transaction dies with it
                pass
            raise

    def _ids_on_topic(self, since_ms: int, wanted: set[str]) -> set[str]:
        """Which of `wanted` are committed on the topic at or after since_ms (header ids)."""
        consumer = self.consumer
        parts = consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if not tps:
            return set()
        consumer.assign(tps)
        starts = consumer.offsets_for_times({tp: max(since_ms, 0) for tp in tps})
        ends = consumer.end_offsets(tps)
        for tp in tps:
            start = starts.get(tp)
            consumer.seek(tp, start.offset if start is not None else ends[tp])
        found: set[str] = set()
        deadline = time.monotonic() + READBACK_TIMEOUT_S
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise PublishError(f"reading back {self.topic!r} took over {READBACK_TIMEOUT_S:.0f} s "
                                   "(an open transaction of another producer?); nothing was sent")
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    for key, value in record.headers or []:
                        if key == ID_HEADER and value is not None:
                            rid = value.decode("utf-8", "replace")
                            if rid in wanted:
                                found.add(rid)
        return found


_PUBLISHERS: dict[tuple[str, str], _Publisher] = {}
_PUBLISHERS_LOCK = threading.Lock()


def _publisher(settings: Settings, topic: str) -> _Publisher:
    key = (settings.bootstrap_servers, topic)
    with _PUBLISHERS_LOCK:
        if key not in _PUBLISHERS:
            _PUBLISHERS[key] = _Publisher(settings, topic)
        return _PUBLISHERS[key]


def close_publishers() -> None:
    """Close the cached Kafka clients (tests that simulate a fresh process; shutdown)."""
    with _PUBLISHERS_LOCK:
        for publisher in _PUBLISHERS.values():
            with publisher.lock:
                publisher.close()
        _PUBLISHERS.clear()


def read_topic(settings: Settings, topic: str, *, timeout_s: float = 10.0, raw: bool = False) -> list[dict]:
    """Every committed record of a topic, decoded (tests, the bench and audits):
    key, value (parsed JSON, or the bytes as sent with raw=True), headers, partition,
    offset, timestamp_ms."""
    consumer = kafka_clients.new_consumer(settings, client_id="lakehouse-read-topic",
                                          isolation_level="read_committed")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=200).values():
                for r in records:
                    out.append({"key": r.key.decode("utf-8") if r.key is not None else None,
                                "value": r.value if raw or r.value is None else json.loads(r.value),
                                "headers": {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])},
                                "partition": r.partition, "offset": r.offset, "timestamp_ms": r.timestamp})
        return out
    finally:
        consumer.close()


def stage_rows(spark: SparkSession, rows: list[dict]) -> DataFrame:
    """Python dicts (the STAGE_COLUMNS) -> a DataFrame for stage_notifications (small,
    driver-made notifications such as a batch job's decisions)."""
    schema = T.StructType([
        T.StructField("notification_id", T.StringType()), T.StructField("type", T.StringType()),
        T.StructField("account_id", T.StringType()), T.StructField("occurred_at", T.TimestampType()),
        T.StructField("trigger_event_ids", T.ArrayType(T.StringType())), T.StructField("payload", T.StringType()),
    ])
    return spark.createDataFrame([tuple(r.get(c) for c in STAGE_COLUMNS) for r in rows], schema)
