"""Silver's batch plan: what one micro-batch writes to which table, from its own rows and
the few stored rows its keys can touch (DESIGN sections 4 and 8).

Pure in the DataFrame sense: the plan reads stored tables only through the reader it is
given and writes nothing, so it runs as well on in-memory frames
(tests/unit/test_silver_plan.py) as on the lake. pipelines/ingest/silver.py hands it the
lake's tables, then writes the plan in the crash-safe order and records the batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.core.config import DedupRule, SilverConfig
from pipelines.core.tables import ACCOUNT_EVENTS as ACCOUNT
from pipelines.core.tables import COORDINATES, DUPLICATES, QUARANTINE, RULE_STATE, filter_touched_partitions, spec
from pipelines.core.tables import USAGE_EVENTS as USAGE
from pipelines.ingest import dedup as D
from pipelines.ingest.parse import filter_bad, filter_good, is_bad

# Stored silver rows carry where they are: kept (usage_events) or dropped by a rule (duplicates).
IN_USAGE = "usage"
IN_DUPLICATES = "duplicates"
# Future occurred_at is quarantined after this many days; a retry chain's stored events can
# lie up to that far ahead of today.
_FUTURE_DAYS = 2

# Table name -> its stored rows as this batch sees them (lazy, unpruned).
Reader = Callable[[str], DataFrame]
# The earliest scope date a batch's rule-state lookup needs (None: no date) -> silver.rule_state's
# rows from that date on at least (the stream writer's own copy of them; silver.py).
StateReader = Callable[[date | None], DataFrame]


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


@dataclass
class SilverPlan:
    """What one batch writes where. Frames only. When the plan can tell that no stored row
    moves (`appends_only`), the writer appends it without counting it first; otherwise its
    counts decide between appends and the MERGE path."""
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
    rule_state: DataFrame       # rows to add to silver.rule_state
    exact_rules: bool = False   # whether some key was decided over its stored events (not its state)
    # No stored row can move: no identity lookup (so no earlier copy replaces a stored one)
    # and every rule key decided from its state (so no stored decision changes).
    appends_only: bool = False
    empty: frozenset = frozenset()   # tables the plan holds no rows for, known without a job


# -- history reads, each pruned to what the batch can touch ---------------------------------

def stored_rows(read: Reader, table: str, dates: DataFrame | Column | None, own, claims: bool) -> DataFrame:
    """A silver table's rows on the given dates (a frame of dates, pruned at run time, or
    a predicate on event_date, pruned when planned), without the batch's own rows (a
    replay of the batch must plan as its first attempt did).

    The stream's batch is one offset range per Kafka partition (`own`: a list of
    (topic, partition, first, last), known before any read), so its rows are told by a
    predicate; a backfill slice is not, and is told by its coordinates (a frame)."""
    df = read(table)
    if isinstance(dates, Column):
        df = df.filter(dates)
    elif dates is not None:
        df = df.transform(filter_touched_partitions(dates, ["event_date"]))
    return df.transform(filter_not_own(own))


def filter_not_own(own):
    """Rows not among the batch's own: outside its offset ranges (a list, the stream's) or
    without its coordinates (a frame, a backfill slice's)."""

    def transform(df: DataFrame) -> DataFrame:
        if isinstance(own, list):
            return df.filter(~inside_ranges(own))
        return df.join(F.broadcast(own), on=COORDINATES, how="left_anti")

    return transform


def identity_history(read: Reader, probe: DataFrame, own, claims: bool) -> DataFrame:
    """Kept copies (any silver table but conflicting-copy rows) of the probed identities."""
    dates = probe.select("event_date").distinct() if claims else None
    keys = probe.select(*D.IDENTITY).distinct()
    cols = [*D.IDENTITY, *D.ORDER_COLUMNS, "payload_sha256"]
    stored = None
    for table in (USAGE, ACCOUNT, DUPLICATES):
        part = stored_rows(read, table, dates, own, claims)
        if table == DUPLICATES:
            part = part.filter(F.col("rule") != D.IDENTITY_RULE)
        part = part.join(F.broadcast(keys), on=D.IDENTITY, how="left_semi").select(*cols)
        stored = part if stored is None else stored.unionByName(part)
    return stored


def rule_history(read: Reader, rules: tuple[DedupRule, ...], new_rule_events: DataFrame, own, span: tuple | None,
                 claims: bool) -> DataFrame:
    """Stored events of the touched rule keys within each new event's scope, each with its
    key's `_first_new` (where a retry-window refold starts). `span`: the first and last
    event_date any scope can reach, when the batch knows them already."""
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
    kept = stored_rows(read, USAGE, dates, own, claims).select(*usage_cols).withColumns(
        {"_in": F.lit(IN_USAGE), "rule": F.lit(None).cast("string"), "duplicate_of": F.lit(None).cast("string")})
    dropped = (stored_rows(read, DUPLICATES, dates, own, claims).filter(F.col("rule") != D.IDENTITY_RULE)
               .select(*usage_cols, "rule", "duplicate_of").withColumn("_in", F.lit(IN_DUPLICATES)))
    stored = kept.unionByName(dropped).transform(D.with_rule_name(rules)).filter(F.col("_rule").isNotNull())
    in_scope = (F.col("occurred_at") >= F.col("_scope_start")) & (F.col("occurred_at") < F.col("_scope_end"))
    return (stored.join(F.broadcast(scopes), on=D.RULE_KEY, how="inner").filter(in_scope)
            .drop("_scope_start", "_scope_end"))


# -- the plan ----------------------------------------------------------------------------------

def plan_batch(batch: DataFrame, read: Reader, rules: tuple[DedupRule, ...], silver: SilverConfig, *,
               claims: bool = True, read_state: StateReader | None = None) -> SilverPlan:
    """What one batch writes where, from the batch and the stored rows it reads through
    `read` (table name -> that table's rows, unpruned: every read here prunes itself).

    `batch`: claimed silver_input rows (the stream's, after the hot state) or, with
    claims=False (the backfill), plain silver_input rows, which are all looked up.
    Nothing is written; the few actions here (local checkpoints, one profile row) only
    materialise what several outputs share.

    Two steps, in DESIGN section 4's order: identity (each event once ever, the first copy
    in Kafka order kept), then the custom rules over the new events identity keeps.
    `read_state`: where the rule state comes from, when not from `read` (silver.py's copy)."""
    identity = plan_identity(batch, read, rules, silver, claims=claims)
    new_events = identity.new_events
    usage_new = new_events.filter(F.col("event_type") == "usage")
    account = select_for(new_events.filter(F.col("event_type") != "usage"), ACCOUNT, "_replaces")
    usage_cols = spec(USAGE).column_names
    unruled = usage_new.filter(F.col("_rule").isNull()).select(*usage_cols, "_replaces")
    rule_new = usage_new.filter(F.col("_rule").isNotNull()).transform(D.with_kafka_order)
    identity_drops = select_for(identity.conflicting.withColumn("_update", F.lit(False)), DUPLICATES, "_update")
    profile = identity.profile
    # From the profile's counts, each an upper bound of what the table gets: the quarantine
    # is the bad copies, account events are among the first copies of other types, rule
    # state comes only from events a rule governs.
    empty = frozenset(table for table, count in ((QUARANTINE, profile["bad"]), (ACCOUNT, profile["other"]),
                                                 (RULE_STATE, profile["rule"])) if not count)
    if not profile["rule"]:
        return SilverPlan(
            quarantine=identity.quarantine, usage=unruled, account=account, duplicates=identity_drops,
            usage_deletes=unruled.select(*COORDINATES).limit(0), revived=unruled.select(*COORDINATES).limit(0),
            identity_duplicates=identity.duplicates,
            decided=rule_new.withColumns({"_decision": F.lit(D.KEPT), "rule": F.lit(None).cast("string"),
                                          "_in_usage": F.lit(False), "_in_duplicates": F.lit(False)}).limit(0),
            unruled=unruled, own=identity.own,
            rule_state=batch.sparkSession.createDataFrame([], spec(RULE_STATE).struct_type()),
            appends_only=claims and not profile["probe"], empty=empty,
        )

    decided, state_rows, exact = plan_rules(rule_new, read, rules, identity, claims=claims, read_state=read_state)
    kept, dropped = D.filter_kept(decided), D.filter_dropped(decided)
    usage = unruled.unionByName(kept.filter(~F.col("_in_usage")).select(*usage_cols, "_replaces"))
    changed_drop = ~F.col("_in_duplicates") | ~F.col("_stored_duplicate_of").eqNullSafe(F.col("duplicate_of"))
    duplicates = identity_drops.unionByName(
        select_for(dropped.filter(changed_drop).withColumn("_update", F.col("_in_duplicates")), DUPLICATES, "_update"))
    return SilverPlan(
        quarantine=identity.quarantine, usage=usage, account=account, duplicates=duplicates,
        usage_deletes=dropped.filter(F.col("_in_usage")).select(*COORDINATES),
        revived=kept.filter(F.col("_in_duplicates")).select(*COORDINATES),
        identity_duplicates=identity.duplicates, decided=decided, unruled=unruled, own=identity.own,
        rule_state=state_rows, exact_rules=exact,
        appends_only=claims and not profile["probe"] and not exact, empty=empty,
    )


@dataclass
class IdentityPlan:
    """Identity's part of a batch plan (DESIGN section 4.1)."""
    quarantine: DataFrame
    new_events: DataFrame       # first copies never stored before (+ `_replaces`, `_rule`)
    duplicates: DataFrame       # every identity duplicate: in-batch, late and recent copies
    conflicting: DataFrame      # the duplicates whose payload differs from the kept copy's
    profile: object             # _profile's row: which history reads the batch needs
    own: list | DataFrame       # the batch's rows: offset ranges (a stream) or coordinates (a backfill)
    span: tuple | None          # the first and last date a rule scope reaches (backfill only)


def plan_identity(batch: DataFrame, read: Reader, rules: tuple[DedupRule, ...], silver: SilverConfig, *,
                  claims: bool = True) -> IdentityPlan:
    """Quarantine the bad copies; of the good ones, the new events (first copies never
    stored) and the identity duplicates. Silver is read only for the rare first copies whose
    earlier copy may have left the hot state (`_needs_lookup`), pruned to their dates."""
    copies = batch.transform(D.filter_copy_claims).drop(D.CLAIM) if claims else batch
    quarantine = copies.transform(filter_bad).transform(to_quarantine_rows)
    if claims:
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
    profile = _profile(first, copies, rules)
    own = (copies.select(*COORDINATES) if not claims else
           [tuple(r) for r in profile["own"]])
    span = (profile["first_date"], profile["last_date"]) if claims else None

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
        seen = (identity_history(read, candidates.filter(F.col("_needs_lookup")), own, claims)
                .transform(D.history_first_copies))
        classified = (candidates.join(F.broadcast(seen), on=D.IDENTITY, how="left")
                      .transform(_with_replaces).localCheckpoint())
    else:
        # Nothing read: the candidates are the checkpointed good rows, filtered.
        classified = candidates.withColumns({"_seen_order": F.lit(None).cast(first.schema["_order"].dataType),
                                             "_seen_payload": F.lit(None).cast("string")}).transform(_with_replaces)
    late_copies = classified.transform(D.filter_late_copies).drop("_replaces")
    duplicates = (in_batch_copies.unionByName(late_copies, allowMissingColumns=True)
                  .unionByName(recent_copies, allowMissingColumns=True))
    return IdentityPlan(
        quarantine=quarantine, new_events=classified.transform(D.filter_new_events), duplicates=duplicates,
        conflicting=duplicates.filter(~F.col("_kept_payload").eqNullSafe(F.col("payload_sha256"))),
        profile=profile, own=own, span=span)


def plan_rules(rule_new: DataFrame, read: Reader, rules: tuple[DedupRule, ...], identity: IdentityPlan, *,
               claims: bool = True, read_state: StateReader | None = None) -> tuple[DataFrame, DataFrame, bool]:
    """The custom rules' decisions for the new events they govern (DESIGN section 4.2), each
    with where the event is stored now; the state rows to append; whether some key was
    decided over its stored events rather than its state.

    A key whose new events all come after what its state has seen is decided from the
    state; a key with an earlier one (a late event) and every key of a backfill, over the
    stored events its decision can depend on."""
    own, span = identity.own, identity.span
    usage_cols = spec(USAGE).column_names
    anchors = state_anchors(read, rules, rule_new, own, identity.profile, read_state).localCheckpoint()
    conflicts = anchors.filter(F.col("_conflict")).select(*D.RULE_KEY).distinct()
    exact_keys = conflicts.count() if claims else None
    stored_cols = [*usage_cols, "_rule", "_in", "duplicate_of"]
    # No conflicting key (the steady state): every anchor stands as stored, and the decisions
    # below do not carry an anti-join whose broadcast each of their branches ran again.
    unconflicted = anchors if exact_keys == 0 else anchors.join(F.broadcast(conflicts), on=D.RULE_KEY, how="left_anti")
    stored = (select_for(unconflicted, USAGE, "_rule")
              .withColumns({"_in": F.lit(IN_USAGE), "duplicate_of": F.lit(None).cast("string")})
              .select(*stored_cols))
    if exact_keys != 0:
        relooked = rule_new if not claims else rule_new.join(F.broadcast(conflicts), on=D.RULE_KEY, how="left_semi")
        history = (rule_history(read, rules, relooked, own, None if claims else span, claims)
                   .withColumn("_stored_kept", F.col("_in") == IN_USAGE)
                   .transform(D.with_kafka_order)
                   .transform(D.filter_retry_candidates(rules))
                   .select(*stored_cols))
        stored = (history if not claims else history.unionByName(stored)).localCheckpoint()
    # Rule events are a small share of a batch: one partition holds them, so each window and
    # aggregate below runs in place instead of behind a shuffle (a stage each).
    decided = (
        stored.select(*usage_cols, "_rule")
        .unionByName(rule_new.select(*usage_cols, "_rule"))
        .coalesce(1)
        .transform(D.with_kafka_order).transform(D.with_copy_rank).transform(D.filter_first_copies)
        .transform(D.apply_dedup_rules(rules))
    )
    # Where each decided event is stored now (a crash between two writes of a correction
    # can leave it in both tables), so that only what changes is written.
    placed = stored.coalesce(1).groupBy(*COORDINATES).agg(
        F.max(F.col("_in") == IN_USAGE).alias("_in_usage"),
        F.max(F.col("_in") == IN_DUPLICATES).alias("_in_duplicates"),
        F.max_by("duplicate_of", F.col("_in") == IN_DUPLICATES).alias("_stored_duplicate_of"))
    # A stream batch's placements and new rule events are its keys' few rows: broadcast, not
    # a shuffle and sort of each side (a checkpoint keeps the size estimate of the plan that
    # made it, which hid that). A backfill slice's can be a month of events: Spark chooses.
    small = F.broadcast if claims else (lambda df: df)
    placed_decisions = (
        decided.join(small(placed), on=COORDINATES, how="left")
        .join(small(rule_new.select(*COORDINATES, "_replaces")), on=COORDINATES, how="left")
        .withColumns({"_in_usage": F.coalesce("_in_usage", F.lit(False)),
                      "_in_duplicates": F.coalesce("_in_duplicates", F.lit(False)),
                      "_replaces": F.coalesce("_replaces", F.lit(False))})
    ).localCheckpoint()   # the decisions and their placement in one job
    state_rows = (placed_decisions.coalesce(1).withColumn("_new", ~F.col("_in_usage") & ~F.col("_in_duplicates"))
                  .transform(D.rule_state_rows(rules, anchors.select(*D.RULE_KEY, "_seq")))
                  .select(*spec(RULE_STATE).column_names)).localCheckpoint()   # counted, appended, and kept by the writer
    return placed_decisions, state_rows, exact_keys != 0


def rule_state_of(read: Reader, rules: tuple[DedupRule, ...]) -> DataFrame:
    """silver.rule_state as the stored events make it: every stored event a custom rule
    governs, as decided (kept in usage_events, dropped by a rule in duplicates), folded into
    state rows. What a lake without the table, or with one built for other rules, starts from."""
    usage_cols = spec(USAGE).column_names
    kept = read(USAGE).select(*usage_cols).withColumn("_decision", F.lit(D.KEPT))
    dropped = (read(DUPLICATES).filter(F.col("rule") != D.IDENTITY_RULE)
               .select(*usage_cols).withColumn("_decision", F.lit(D.DROPPED)))
    return (kept.unionByName(dropped).transform(D.with_rule_name(rules)).filter(F.col("_rule").isNotNull())
            .withColumn("_new", F.lit(True)).transform(D.rule_state_rows(rules))
            .select(*spec(RULE_STATE).column_names))


def state_anchors(read: Reader, rules: tuple[DedupRule, ...], rule_new: DataFrame, own, profile,
                  read_state: StateReader | None = None) -> DataFrame:
    """The touched keys' state (silver.rule_state) as stored, kept events: a calendar-period
    key's kept event of each period the batch touches, a retry-window key's anchor in force.
    `_conflict` marks a key whose new events do not all come after what its state has seen
    (an event earlier than its period's kept one, or than its chain's latest): such a batch
    is decided over the stored events instead.

    The read is pruned to the partitions the batch can touch: the first days of its
    calendar periods (`profile["periods"]`), and from one window before its earliest
    retry-window event on (`profile["retry_from"]`); the batch's own rows (a replay's first
    attempt) are left out."""
    dates = F.col("scope_date").isin(list(profile["periods"]))
    if profile["retry_from"] is not None:
        dates = dates | (F.col("scope_date") >= F.lit(profile["retry_from"]))
    # One partition each (narrow rows of the touched partitions): their aggregates need no shuffle.
    # Materialised: two broadcasts below read these keys (the semi-join before the fold and
    # the join after it), and each recomputed them from the batch's rows.
    touched = (rule_new.coalesce(1).transform(D.with_rule_period(rules)).groupBy(*D.RULE_KEY, "_period")
               .agg(F.min(D.position()).alias("_first")).withColumnRenamed("_period", "_touched_period")
               .localCheckpoint())
    earliest = min([*profile["periods"], *([profile["retry_from"]] if profile["retry_from"] is not None else [])],
                   default=None)
    stored = read_state(earliest) if read_state is not None else read(RULE_STATE)
    # The fold is per key, so only the touched keys' rows need folding: the copy of the
    # touched dates gains every batch's rows, and folding all of them grew the lookup
    # with the table (1.3 -> 4.5 s over nine batches of 100k events).
    keys = touched.select(F.col("_rule").alias("rule"), "account_id", "dedup_key")
    state = (stored.filter(dates).transform(filter_not_own(own)).coalesce(1)
             .join(F.broadcast(keys), on=["rule", "account_id", "dedup_key"], how="left_semi"))
    conflict = F.when(F.col("_period").isNotNull(), F.col("_first") < D.position()).otherwise(
        F.col("_last") > F.col("_first"))
    return (state.transform(D.rule_state_events(rules))
            .join(F.broadcast(touched), on=D.RULE_KEY, how="inner")
            .filter(F.col("_period").eqNullSafe(F.col("_touched_period")))
            .withColumn("_conflict", conflict)
            .drop("_touched_period", "_first", "_last", "_period"))


def _profile(first: DataFrame, copies: DataFrame, rules: tuple[DedupRule, ...]):
    """One row, in one job, that decides which history reads the batch needs at all and
    what they may touch: how many first copies need an identity lookup (`probe`) or fall
    under a custom rule (`rule`), the first and last date any rule scope reaches, and the
    batch's own offset range per Kafka partition (`own`); and which tables the batch
    cannot write to: how many copies are bad (`bad`) and how many first copies are not
    usage events (`other`).

    A union of the two inputs and one two-level aggregate: a crossJoin of one aggregate
    per question would broadcast each side in a job of its own."""
    claimed = F.col("_claimed")
    ruled = claimed & F.col("_rule").isNotNull()
    retry = ruled & F.col("_rule").isin(*D.retry_rule_names(rules))
    no_coordinates = [F.lit(None).cast(copies.schema[c].dataType).alias(c) for c in COORDINATES]
    decisions = first.transform(D.with_rule_scope(rules)).transform(D.with_rule_period(rules)).select(
        *no_coordinates, (claimed & F.col("_needs_lookup")).alias("_probe"), ruled.alias("_ruled"),
        F.when(ruled, F.col("_scope_start")).alias("_start"), F.when(ruled, _scope_end()).alias("_end"),
        F.when(ruled, F.col("_period")).alias("_period"), F.when(retry, F.to_date("_scope_start")).alias("_retry"),
        # plan_batch's account filter, on every first copy: a bound of what account_events gets.
        (F.col("event_type") != "usage").alias("_other"), F.lit(False).alias("_bad"))
    offsets = copies.select(*COORDINATES, F.lit(False).alias("_probe"), F.lit(False).alias("_ruled"),
                            F.lit(None).cast("timestamp").alias("_start"), F.lit(None).cast("timestamp").alias("_end"),
                            F.lit(None).cast("date").alias("_period"), F.lit(None).cast("date").alias("_retry"),
                            F.lit(False).alias("_other"), is_bad().alias("_bad"))
    # One task, no shuffle before the aggregates (see SilverBatchWriter._counts).
    per_partition = decisions.unionByName(offsets).coalesce(1).groupBy("kafka_topic", "kafka_partition").agg(
        F.count_if("_probe").alias("probe"), F.count_if("_ruled").alias("rule"),
        F.count_if("_other").alias("other"), F.count_if("_bad").alias("bad"),
        F.min("_start").alias("_start"), F.max("_end").alias("_end"),
        F.collect_set("_period").alias("_periods"), F.min("_retry").alias("_retry"),
        F.min("kafka_offset").alias("first"), F.max("kafka_offset").alias("last"))
    return per_partition.agg(
        *[F.coalesce(F.sum(c), F.lit(0)).alias(c) for c in ("probe", "rule", "other", "bad")],
        F.to_date(F.min("_start")).alias("first_date"), F.to_date(F.max("_end")).alias("last_date"),
        # The rule state's partitions the batch can touch (state_anchors).
        F.array_distinct(F.flatten(F.collect_list("_periods"))).alias("periods"), F.min("_retry").alias("retry_from"),
        F.collect_list(F.when(F.col("kafka_topic").isNotNull(),
                              F.struct("kafka_topic", "kafka_partition", "first", "last"))).alias("own"),
    ).first()


def _scope_end() -> Column:
    """A rule scope's end; an open one (a retry chain runs forward) ends where stored events
    can: the future tolerance ahead of now."""
    return F.coalesce(F.col("_scope_end"), F.current_timestamp() + F.expr(f"INTERVAL {_FUTURE_DAYS} DAYS"))


def _with_replaces(df: DataFrame) -> DataFrame:
    """_replaces: the row is an earlier copy (Kafka order) than the one silver holds."""
    return df.withColumn("_replaces", F.coalesce(F.col("_order") < F.col("_seen_order"), F.lit(False)))


def inside_ranges(ranges: list[tuple]) -> Column:
    """Rows within the given (topic, partition, first offset, last offset) ranges."""
    inside = F.lit(False)
    for topic, partition, first, last in ranges:
        inside = inside | ((F.col("kafka_topic") == topic) & (F.col("kafka_partition") == partition)
                           & F.col("kafka_offset").between(first, last))
    return inside
