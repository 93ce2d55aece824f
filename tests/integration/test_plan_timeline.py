"""gold.plan_timeline: notify's per-account plan history, written from silver's change feed,
seeded once from silver in a lake made before it, and read in the touched shards only."""
from __future__ import annotations

import hashlib
from datetime import datetime

import pytest
from pyspark.sql import functions as F

from pipelines.core.settings import Settings
from pipelines.core.tables import ACCOUNT_EVENTS, PLAN_TIMELINE, Lake, spec
from pipelines.rules import timeline as T

COLUMNS = ["account_id", "event_id", "event_type", "occurred_at", "plan_id", "kafka_timestamp", "kafka_topic",
           "kafka_partition", "kafka_offset"]


def _shard(account: str) -> str:
    return hashlib.sha256(account.encode("utf-8")).hexdigest()[0]


def _events(spark, rows):
    """(account, event_id, type, plan, day, offset) -> silver.account_events rows."""
    types = {c.name: c.type for c in spec(ACCOUNT_EVENTS).columns}
    data = [(a, e, t, p, datetime(2026, 1, d), datetime(2026, 1, d, 0, 0, 1), "events", 0, o)
            for a, e, t, p, d, o in rows]
    df = spark.createDataFrame(data, "account_id string, event_id string, event_type string, plan_id string, "
                                     "occurred_at timestamp, kafka_timestamp timestamp, kafka_topic string, "
                                     "kafka_partition int, kafka_offset bigint")
    df = df.withColumn("event_date", F.to_date("occurred_at"))
    return df.withColumns({c: F.lit(None).cast(t) for c, t in types.items() if c not in df.columns}).select(*types)


@pytest.fixture
def lake(tmp_path):
    return Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))


def _timeline(spark, lake) -> list[tuple]:
    return sorted(tuple(r) for r in lake.read(spark, PLAN_TIMELINE).select(*COLUMNS).collect())


def _expected(events) -> list[tuple]:
    return sorted(tuple(r) for r in events.select(*COLUMNS).collect())


def test_each_plan_event_is_kept_once_as_its_earliest_copy_whatever_the_order(spark, lake):
    T.ensure_plan_timeline(spark, lake)
    started = ("a", "s1", "subscription.started", "basic", 1, 10)
    changed_late_copy = ("a", "p1", "plan.changed", "pro", 5, 30)
    changed_early_copy = ("a", "p1", "plan.changed", "pro", 5, 20)
    cancelled = ("b", "x1", "subscription.cancelled", None, 7, 40)
    purchase = ("a", "buy", "purchase.completed", None, 6, 50)          # no plan event: not kept
    # The later copy first, then a batch holding both copies, then the batch replayed.
    T.merge_plan_timeline(spark, lake, _events(spark, [started, changed_late_copy, purchase]), T.SHARDS)
    both = _events(spark, [changed_late_copy, changed_early_copy, cancelled])
    T.merge_plan_timeline(spark, lake, both, T.SHARDS)
    T.merge_plan_timeline(spark, lake, both, T.SHARDS)
    # A later copy arriving after the earlier one changes nothing.
    T.merge_plan_timeline(spark, lake, _events(spark, [changed_late_copy]), T.SHARDS)
    assert _timeline(spark, lake) == _expected(_events(spark, [started, changed_early_copy, cancelled]))
    shards = {r.account_id: r.account_shard for r in lake.read(spark, PLAN_TIMELINE).collect()}
    assert shards == {"a": _shard("a"), "b": _shard("b")}
    assert list(lake.delta(spark, PLAN_TIMELINE).detail().select("partitionColumns").first()[0]) == ["account_shard"]


def test_a_lake_made_before_the_timeline_is_seeded_from_silver_once(spark, lake, tmp_path, monkeypatch):
    lake.ensure(spark, ACCOUNT_EVENTS)
    stored = _events(spark, [("a", "s1", "subscription.started", "basic", 1, 1), ("a", "buy", "purchase.completed",
                                                                               None, 2, 2),
                             ("c", "s2", "subscription.started", "pro", 3, 3), ("c", "p2", "plan.changed", "basic", 4, 4)])
    stored.write.format("delta").mode("append").save(lake.path(ACCOUNT_EVENTS))
    T.ensure_plan_timeline(spark, lake)
    plan_events = stored.filter(F.col("event_type") != "purchase.completed")
    assert _timeline(spark, lake) == _expected(plan_events)
    assert lake.properties(spark, PLAN_TIMELINE)[T.SEEDED] == "true"

    # Another process finds it seeded from its properties and does not read silver again.
    monkeypatch.setattr(T, "_SEEDED", set())
    for f in (tmp_path / "lake").rglob("*.parquet"):
        if "plan_timeline" not in str(f):
            f.unlink()
    T.ensure_plan_timeline(spark, lake)
    assert _timeline(spark, lake) == _expected(plan_events)


def test_a_timeline_created_but_not_seeded_is_seeded_on_the_next_start(spark, lake, monkeypatch):
    """A process that died between creating the table and seeding it."""
    lake.ensure(spark, ACCOUNT_EVENTS)
    stored = _events(spark, [("a", "s1", "subscription.started", "basic", 1, 1)])
    stored.write.format("delta").mode("append").save(lake.path(ACCOUNT_EVENTS))
    lake.ensure(spark, PLAN_TIMELINE)
    monkeypatch.setattr(T, "_SEEDED", {lake.ref(PLAN_TIMELINE)})   # even with this process's memory of it
    T.ensure_plan_timeline(spark, lake)
    assert _timeline(spark, lake) == []       # the table existed when this process saw it seeded
    monkeypatch.setattr(T, "_SEEDED", set())
    T.ensure_plan_timeline(spark, lake)
    assert _timeline(spark, lake) == _expected(stored)


def test_a_lookup_and_a_merge_read_only_the_shards_of_their_accounts(spark, lake, tmp_path):
    """A data file of another shard gone from disk does not stop them; a lookup of that
    shard reads it (and fails on it)."""
    accounts = [f"acct-{i}" for i in range(40)]
    T.ensure_plan_timeline(spark, lake)
    T.merge_plan_timeline(spark, lake, _events(spark, [(a, f"s-{a}", "subscription.started", "basic", 1, i)
                                                       for i, a in enumerate(accounts)]), T.SHARDS)
    mine = "acct-0"
    other = next(a for a in accounts if _shard(a) != _shard(mine))
    for f in (tmp_path / "lake").rglob(f"account_shard={_shard(other)}/*.parquet"):
        f.unlink()

    def lookup(account):
        wanted = spark.createDataFrame([(account,)], "account_id string")
        return [r.event_id for r in T.read_plan_timeline(spark, lake, wanted, [_shard(account)]).collect()]

    assert lookup(mine) == [f"s-{mine}"]
    T.merge_plan_timeline(spark, lake, _events(spark, [(mine, "p-0", "plan.changed", "pro", 2, 100)]), [_shard(mine)])
    assert sorted(lookup(mine)) == ["p-0", f"s-{mine}"]
    with pytest.raises(Exception, match="(?i)file.*(not exist|not found)|FileNotFound"):
        lookup(other)
