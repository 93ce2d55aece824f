"""Deduplication transforms (DESIGN section 4), pure DataFrame -> DataFrame.

Identity: (account_id, event_id) is one event forever; the first copy in Kafka order wins.
Custom rules: per metric, on event time, for usage events that carry a dedup_key.

Every function here is a set function of its input rows: the same rows give the same
answer however they were cut into micro-batches, which is what makes restarts exact.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from pipelines.core.config import DedupRule
from pipelines.core.identity import IDENTITY, kafka_order
from pipelines.core.tables import KAFKA_ORDER

# A custom rule decides per (rule, account, dedup_key): the events one fold sees together.
RULE_KEY = ["_rule", "account_id", "dedup_key"]
IDENTITY_RULE = "identity"
KEPT = "kept"
DROPPED = "dropped"

# Kafka order. The broker stamps LogAppendTime, so within a partition timestamps follow
# offsets; partition and offset break ties and order copies that landed in different
# partitions (a producer that keyed a record by something other than account_id).
ORDER_COLUMNS = KAFKA_ORDER


def with_kafka_order(df: DataFrame) -> DataFrame:
    return df.withColumn("_order", kafka_order())


def with_copy_rank(df: DataFrame) -> DataFrame:
    """_copy_rank 1 for the first copy of each identity in these rows, 2.. for the rest;
    _kept_payload: the payload hash of that first copy."""
    w = Window.partitionBy(*IDENTITY).orderBy(F.col("_order"))
    return df.withColumns({
        "_copy_rank": F.row_number().over(w),
        "_kept_payload": F.first("payload_sha256").over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow)),
    })


def filter_first_copies(df: DataFrame) -> DataFrame:
    return df.filter(F.col("_copy_rank") == 1).drop("_copy_rank", "_kept_payload")


def filter_repeated_copies(df: DataFrame) -> DataFrame:
    """Second and later copies, marked as identity duplicates of the first."""
    return (
        df.filter(F.col("_copy_rank") > 1).drop("_copy_rank")
        .withColumns({"rule": F.lit(IDENTITY_RULE), "duplicate_of": F.col("event_id"),
                      "_decision": F.lit(DROPPED)})
    )


def filter_conflicting_copies(df: DataFrame) -> DataFrame:
    """Identity duplicates whose bytes differ from the kept copy: worth a row in
    silver.duplicates. Byte-identical re-sends carry nothing new (and the hot path may or
    may not have met them first, depending on timing), so they are only counted."""
    return df.filter(~F.col("_kept_payload").eqNullSafe(F.col("payload_sha256"))).drop("_kept_payload")


def history_first_copies(history: DataFrame) -> DataFrame:
    """Identity keys already in silver with the Kafka order and payload hash of the copy
    kept there."""
    return (
        history.select(*IDENTITY, kafka_order().alias("_seen_order"), "payload_sha256")
        .groupBy(*IDENTITY).agg(
            F.min("_seen_order").alias("_seen_order"),
            F.min_by("payload_sha256", "_seen_order").alias("_seen_payload"),
        )
    )


def with_history_order(history_keys: DataFrame):
    """Attach _seen_order: the Kafka order of this identity's copy already in silver, if any."""

    def transform(df: DataFrame) -> DataFrame:
        return df.join(history_keys, on=IDENTITY, how="left")

    return transform


def filter_new_events(df: DataFrame) -> DataFrame:
    """Not in silver yet, or this very copy (a replayed batch), or an earlier copy than
    the one silver holds (a backfill of a lost range): all of these are written."""
    return (
        df.filter(F.col("_seen_order").isNull() | (F.col("_order") <= F.col("_seen_order")))
        .drop("_seen_order", "_seen_payload")
    )


def filter_late_copies(df: DataFrame) -> DataFrame:
    """A later copy of an event silver already holds: an identity duplicate, whatever
    time separates the two copies."""
    return (
        df.filter(F.col("_order") > F.col("_seen_order"))
        .withColumnRenamed("_seen_payload", "_kept_payload").drop("_seen_order")
        .withColumns({"rule": F.lit(IDENTITY_RULE), "duplicate_of": F.col("event_id"),
                      "_decision": F.lit(DROPPED)})
    )


def with_rule_name(rules: tuple[DedupRule, ...]):
    """_rule: the custom rule governing the row (its metric has one and it has a dedup_key)."""

    def transform(df: DataFrame) -> DataFrame:
        rule = F.lit(None).cast("string")
        for r in rules:
            rule = F.when(F.col("metric") == r.metric, F.lit(r.name)).otherwise(rule)
        return df.withColumn("_rule", F.when(F.col("dedup_key").isNotNull() & (F.col("event_type") == "usage"), rule))

    return transform


def _event_time_order() -> list[Column]:
    return [F.col("occurred_at"), F.col("_order")]


def _once_per_period(df: DataFrame, rule: DedupRule) -> DataFrame:
    bucket = F.date_trunc(rule.period, F.col("occurred_at"))
    w = Window.partitionBy(*RULE_KEY, bucket).orderBy(*_event_time_order())
    first = F.first("event_id").over(w.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    rank = F.row_number().over(w)
    return df.withColumns({
        "_decision": F.when(rank == 1, F.lit(KEPT)).otherwise(F.lit(DROPPED)),
        "duplicate_of": F.when(rank > 1, first),
    })


def _retry_window(df: DataFrame, rule: DedupRule) -> DataFrame:
    """Anchor chain per key: fold the key's events in event-time order. The chain is
    sequential (whether an event is kept depends on the previous kept one), so it is a
    fold over the sorted array with the built-in `aggregate`, not a window frame."""
    window_seconds = int(rule.window.total_seconds())
    events = F.array_sort(F.collect_list(F.struct(
        F.col("occurred_at").alias("t"), F.col("_order").alias("o"), F.col("event_id").alias("id"))))
    init = F.struct(
        F.lit(None).cast("timestamp").alias("anchor"),
        F.lit(None).cast("string").alias("anchor_id"),
        F.array().cast("array<struct<id:string,kept:boolean,dup_of:string>>").alias("out"),
    )

    def step(acc: Column, e: Column) -> Column:
        keep = acc["anchor"].isNull() | (e["t"] >= acc["anchor"] + F.expr(f"INTERVAL {window_seconds} SECONDS"))
        return F.struct(
            F.when(keep, e["t"]).otherwise(acc["anchor"]).alias("anchor"),
            F.when(keep, e["id"]).otherwise(acc["anchor_id"]).alias("anchor_id"),
            F.concat(acc["out"], F.array(F.struct(
                e["id"].alias("id"), keep.alias("kept"),
                F.when(~keep, acc["anchor_id"]).alias("dup_of")))).alias("out"),
        )

    decisions = (
        df.groupBy(*RULE_KEY).agg(F.aggregate(events, init, step)["out"].alias("_out"))
        .select(*RULE_KEY, F.explode("_out").alias("_d"))
        .select(*RULE_KEY, F.col("_d.id").alias("event_id"),
                F.when(F.col("_d.kept"), F.lit(KEPT)).otherwise(F.lit(DROPPED)).alias("_decision"),
                F.col("_d.dup_of").alias("duplicate_of"))
    )
    return df.join(decisions, on=[*RULE_KEY, "event_id"], how="inner")


def apply_dedup_rules(rules: tuple[DedupRule, ...]):
    """Decide kept/dropped for every row under a custom rule.

    Input: rows with `_rule` set, all identity-unique, holding every event known for the
    keys involved (silver history plus new rows). Output: the same rows with `_decision`
    and `duplicate_of` (the kept event that made this one redundant).
    """

    def transform(df: DataFrame) -> DataFrame:
        decided = None
        for rule in rules:
            part = df.filter(F.col("_rule") == rule.name)
            part = _once_per_period(part, rule) if rule.kind == "once_per_calendar_period" else _retry_window(part, rule)
            part = part.withColumn("rule", F.lit(rule.name))
            decided = part if decided is None else decided.unionByName(part)
        if decided is None:
            return df.withColumns({"_decision": F.lit(KEPT), "duplicate_of": F.lit(None).cast("string"),
                                   "rule": F.lit(None).cast("string")}).limit(0)
        return decided

    return transform


def filter_kept(df: DataFrame) -> DataFrame:
    return df.filter(F.col("_decision") == KEPT)


def filter_dropped(df: DataFrame) -> DataFrame:
    return df.filter(F.col("_decision") == DROPPED)


# -- the hot state's two claims -------------------------------------------------------------
# Each good record claims two keys in the stream's dedup state (dropDuplicatesWithinWatermark,
# horizon H of ingestion time): its copy (identity and payload bytes) and its event (identity
# alone). A copy claim that survives is the first time these bytes were seen within H; an
# event claim that survives says no copy of the identity was seen within H before this
# micro-batch. Together they tell, without reading silver, a new event from a conflicting
# copy of a recent one; only a record whose first copy may have left the state needs a look
# at silver (with_needs_lookup).
CLAIM = "_claim"
COPY_CLAIM = "copy"
EVENT_CLAIM = "event"
STATE_KEY = "_state_key"
# What an event claim carries through the state's shuffle; every other column is null in it.
_CLAIM_COLUMNS = ("account_id", "event_id", "ingested_at", "_identity", "payload_sha256", "_problem")


def with_state_claims(df: DataFrame) -> DataFrame:
    """Hot-path keyed rows (_identity, payload_sha256, _problem) -> one copy claim per row
    and, for good rows, one event claim; `_state_key` is what the dedup state holds."""
    good = F.col("_problem").isNull()
    copy_key = F.concat_ws("\u0000", F.lit(COPY_CLAIM), "_identity", F.coalesce("payload_sha256", F.lit("")))
    event_key = F.concat_ws("\u0000", F.lit(EVENT_CLAIM), "_identity")
    claims = F.when(good, F.array(F.struct(F.lit(COPY_CLAIM).alias("c"), copy_key.alias("k")),
                                  F.struct(F.lit(EVENT_CLAIM).alias("c"), event_key.alias("k"))))
    claims = claims.otherwise(F.array(F.struct(F.lit(COPY_CLAIM).alias("c"), copy_key.alias("k"))))
    exploded = df.withColumn("_c", F.explode(claims)).withColumns({CLAIM: F.col("_c.c"), STATE_KEY: F.col("_c.k")})
    light = {c: F.when(F.col(CLAIM) == COPY_CLAIM, F.col(c)) for c in df.columns if c not in _CLAIM_COLUMNS}
    return exploded.drop("_c").withColumns(light)


def filter_copy_claims(df: DataFrame) -> DataFrame:
    return df.filter(F.col(CLAIM) == COPY_CLAIM)


def with_event_claimed(df: DataFrame) -> DataFrame:
    """_claimed: whether the row's identity has a surviving event claim in these rows (new
    to the hot state in this batch). A window over the identity rather than a join: the
    copy rank (with_copy_rank) partitions the same way, so both share one shuffle."""
    return df.withColumn("_claimed", F.max(F.col(CLAIM) == EVENT_CLAIM).over(Window.partitionBy(*IDENTITY)))


def with_needs_lookup(horizon_seconds: int, future_tolerance_seconds: int):
    """_needs_lookup: whether the row's first copy may have left the hot state.

    A copy whose first copy left the state arrived more than H after it; the first copy's
    occurred_at was at most the future tolerance after its own ingestion, so (copies carry
    their event's occurred_at) this one's occurred_at is older than
    ingested_at - H + future_tolerance. Rows at or after that bound cannot be such copies.
    """
    bound = horizon_seconds - future_tolerance_seconds

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn("_needs_lookup",
                             F.col("occurred_at") < F.col("ingested_at") - F.expr(f"INTERVAL {bound} SECONDS"))

    return transform


def with_rule_scope(rules: tuple[DedupRule, ...]):
    """_scope_start/_scope_end: the event-time span of stored events a new rule event's
    decision can depend on or change. A calendar-period rule: the event's period. A retry
    window: from one window before the event onwards (the chain may cascade forward)."""

    def transform(df: DataFrame) -> DataFrame:
        start = F.lit(None).cast("timestamp")
        end = F.lit(None).cast("timestamp")
        for r in rules:
            is_rule = F.col("_rule") == r.name
            if r.kind == "once_per_calendar_period":
                bucket = F.date_trunc(r.period, F.col("occurred_at"))
                start = F.when(is_rule, bucket).otherwise(start)
                end = F.when(is_rule, bucket + F.expr(f"INTERVAL 1 {r.period.upper()}")).otherwise(end)
            else:
                start = F.when(is_rule, F.col("occurred_at") - F.expr(
                    f"INTERVAL {int(r.window.total_seconds())} SECONDS")).otherwise(start)
        return df.withColumns({"_scope_start": start, "_scope_end": end})

    return transform


def first_new_position(rules: tuple[DedupRule, ...]) -> Column:
    """Aggregate over a key's new events (with `_order`): the (occurred_at, _order) of its
    first retry-window event, where a refold of the key starts; null for other rules."""
    retry = [r.name for r in rules if r.kind != "once_per_calendar_period"]
    if not retry:
        return F.lit(None)
    return F.min(F.when(F.col("_rule").isin(*retry), F.struct(F.col("occurred_at"), F.col("_order"))))


def filter_retry_candidates(rules: tuple[DedupRule, ...]):
    """Stored events of retry-window keys, each carrying its key's `_first_new`
    (first_new_position) -> those a refold over the new events needs.

    The fold is sequential in event time, so nothing before a key's first new event moves;
    it starts from the last stored event kept before that point (the anchor in force) and
    runs over everything after it. Calendar-period rules keep all their stored rows.
    """
    retry = [r.name for r in rules if r.kind != "once_per_calendar_period"]
    pos = F.struct(F.col("occurred_at"), F.col("_order"))

    def transform(stored: DataFrame) -> DataFrame:
        if not retry:
            return stored.drop("_first_new")
        per_key = Window.partitionBy(*RULE_KEY)
        anchor = F.max(F.when(F.col("_stored_kept") & (pos < F.col("_first_new")), pos)).over(per_key)
        keep = ~F.col("_rule").isin(*retry) | (pos >= F.coalesce(anchor, F.col("_first_new")))
        return stored.withColumn("_keep", keep).filter(F.col("_keep")).drop("_first_new", "_keep")

    return transform


# -- the custom rules' own state (silver.rule_state) ------------------------------------------
# What a key's next decision needs, kept apart from its events so that a batch whose rule
# events arrive in order decides them from a few narrow rows instead of re-reading the
# period's (or the window's) stored events: a calendar-period key's kept event (its anchor),
# a retry-window key's anchor in force and its latest event. The table is append-only; a
# key's state is the fold of its rows (rule_state_events), so a replayed append changes
# nothing. Events that arrive out of order (earlier than what the state has seen) take the
# exact path over the stored events instead (pipelines/ingest/silver_plan.py).
STATE_ANCHOR = ["event_id", "occurred_at", *ORDER_COLUMNS]
STATE_LAST = ["occurred_at", *ORDER_COLUMNS]


def calendar_rule_names(rules: tuple[DedupRule, ...]) -> list[str]:
    return [r.name for r in rules if r.kind == "once_per_calendar_period"]


def retry_rule_names(rules: tuple[DedupRule, ...]) -> list[str]:
    return [r.name for r in rules if r.kind != "once_per_calendar_period"]


def position(prefix: str = "") -> Column:
    """Where an event stands in a rule's order: event time, then Kafka order."""
    return F.struct(F.col(f"{prefix}occurred_at").alias("occurred_at"), kafka_order(prefix).alias("_order"))


def with_rule_period(rules: tuple[DedupRule, ...]):
    """_period: the first day of the row's calendar period under a calendar-period rule
    (where its state lives), null under a retry window (one state per key)."""

    def transform(df: DataFrame) -> DataFrame:
        period = F.lit(None).cast("date")
        for r in rules:
            if r.kind == "once_per_calendar_period":
                period = F.when(F.col("_rule") == r.name,
                                F.to_date(F.date_trunc(r.period, F.col("occurred_at")))).otherwise(period)
        return df.withColumn("_period", period)

    return transform


def rule_state_rows(rules: tuple[DedupRule, ...], read_seq: DataFrame | None = None):
    """Decided rule rows (apply_dedup_rules; `_new`: written by this batch) -> the
    silver.rule_state rows the batch adds: a calendar-period key's new kept event, and for
    each retry-window key the batch touched, its last kept event and its latest event among
    the rows. Each row carries the coordinates of the batch's latest event of its key, so a
    replay of the batch can leave its own rows out of its reads, and `seq`: one more than
    the key's row the batch read (`read_seq`: RULE_KEY and `_seq`), 1 if it read none."""
    calendar, retry = calendar_rule_names(rules), retry_rule_names(rules)

    def with_seq(rows: DataFrame) -> DataFrame:
        if read_seq is None:
            return rows.withColumn("seq", F.lit(1).cast("bigint"))
        seqs = read_seq.groupBy(*RULE_KEY).agg(F.max("_seq").alias("_seq")).withColumnRenamed("_rule", "rule")
        return (rows.join(seqs, on=["rule", "account_id", "dedup_key"], how="left")
                .withColumn("seq", (F.coalesce("_seq", F.lit(0)) + 1).cast("bigint")).drop("_seq"))

    def transform(decided: DataFrame) -> DataFrame:
        kept = F.col("_decision") == KEPT
        no_last = {f"last_{c}": F.lit(None).cast(decided.schema[c].dataType) for c in STATE_LAST}
        periods = (decided.filter(F.col("_rule").isin(*calendar) & kept & F.col("_new"))
                   .transform(with_rule_period(rules))
                   .select(F.col("_rule").alias("rule"), "account_id", "dedup_key", F.col("_period").alias("scope_date"),
                           *[F.col(c).alias(f"anchor_{c}") for c in STATE_ANCHOR],
                           *[v.alias(k) for k, v in no_last.items()],
                           "kafka_topic", "kafka_partition", "kafka_offset"))
        pos = position()
        chains = (
            decided.filter(F.col("_rule").isin(*retry)).groupBy(*RULE_KEY).agg(
                F.max_by(F.struct(*STATE_ANCHOR), F.when(kept, pos)).alias("_a"),
                F.max_by(F.struct(*STATE_LAST), pos).alias("_l"),
                F.max_by(F.struct("kafka_topic", "kafka_partition", "kafka_offset"),
                         F.when(F.col("_new"), pos)).alias("_p"))
            .filter(F.col("_p").isNotNull())
            .select(F.col("_rule").alias("rule"), "account_id", "dedup_key",
                    F.to_date("_l.occurred_at").alias("scope_date"),
                    *[F.col(f"_a.{c}").alias(f"anchor_{c}") for c in STATE_ANCHOR],
                    *[F.col(f"_l.{c}").alias(f"last_{c}") for c in STATE_LAST],
                    "_p.*")
        )
        return periods.unionByName(chains).transform(with_seq)

    return transform


def rule_state_events(rules: tuple[DedupRule, ...]):
    """silver.rule_state rows -> each key's state as one stored, kept event (its anchor):
    a calendar-period key per period (`_period`) the earliest anchor any row names (a late
    event that re-anchored the period added an earlier one), a retry-window key the anchor
    of its row with the latest event (`_last`, that event's position), the newest (`seq`) of
    rows naming the same one. `_seq`: the seq of the row that decided the state.
    """
    calendar, retry = calendar_rule_names(rules), retry_rule_names(rules)

    def transform(state: DataFrame) -> DataFrame:
        # Both kinds in one aggregate, grouped by key and, for a calendar period, its period:
        # a union of one aggregate per kind scanned the rows twice.
        anchor = F.struct(*[F.col(f"anchor_{c}").alias(c) for c in STATE_ANCHOR])
        newest = F.struct(position("last_").alias("last"), F.col("seq"))
        is_period = F.col("rule").isin(*calendar)
        folded = (state.filter(F.col("rule").isin(*calendar, *retry))
                  .groupBy("rule", "account_id", "dedup_key",
                           F.when(is_period, F.col("scope_date")).alias("_period"))
                  .agg(F.min_by(anchor, position("anchor_")).alias("_first_anchor"), F.max("seq").alias("_max_seq"),
                       F.max_by(anchor, newest).alias("_newest_anchor"), F.max(position("last_")).alias("_max_last"),
                       F.max_by("seq", newest).alias("_newest_seq")))
        return folded.select(
            F.col("rule").alias("_rule"), "account_id", "dedup_key", "_period",
            F.when(is_period, F.col("_first_anchor")).otherwise(F.col("_newest_anchor")).alias("_a"),
            F.when(~is_period, F.col("_max_last")).alias("_last"),
            F.when(is_period, F.col("_max_seq")).otherwise(F.col("_newest_seq")).alias("_seq"),
        ).select("_rule", "account_id", "dedup_key", "_period", "_a.*", "_last", "_seq")

    return transform
