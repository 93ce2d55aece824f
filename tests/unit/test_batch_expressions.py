"""A stream's small micro-batches build their per-task expressions interpreted, large ones
generated (pipelines/core/batch_expressions.py); money comes out the same either way."""
from __future__ import annotations

from decimal import Decimal

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from pipelines.core.batch_expressions import (FACTORY_MODE, SMALL_BATCH_ROWS, expression_mode, interpreted_stream,
                                              set_for_batch)


def test_small_batches_are_interpreted_large_ones_generated_unless_switched_off(monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_EXPRESSION_CODEGEN", raising=False)
    assert [expression_mode(n) for n in (0, 500, SMALL_BATCH_ROWS - 1, SMALL_BATCH_ROWS, 100_000)] == [
        "NO_CODEGEN", "NO_CODEGEN", "NO_CODEGEN", "FALLBACK", "FALLBACK"]
    monkeypatch.setenv("LAKEHOUSE_EXPRESSION_CODEGEN", "true")
    assert expression_mode(500) == "FALLBACK"
    monkeypatch.setenv("LAKEHOUSE_EXPRESSION_CODEGEN", "false")
    assert expression_mode(500) == "NO_CODEGEN"


def test_the_mode_is_set_on_the_session_it_is_given_only(spark, monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_EXPRESSION_CODEGEN", raising=False)
    stream_session, other = spark.newSession(), spark.newSession()
    other.conf.set(FACTORY_MODE, "CODEGEN_ONLY")  # neither of the two the streams set
    set_for_batch(stream_session, 500)
    assert stream_session.conf.get(FACTORY_MODE) == "NO_CODEGEN"
    assert other.conf.get(FACTORY_MODE) == "CODEGEN_ONLY"
    set_for_batch(stream_session, SMALL_BATCH_ROWS)
    assert stream_session.conf.get(FACTORY_MODE) == "FALLBACK"


def _stream_mode(query) -> str:
    # The session the query runs its batches on (Spark clones it when the query is created).
    return query._jsq.streamingQuery().sparkSessionForStream().conf().get(FACTORY_MODE)


def test_a_stream_started_interpreted_keeps_the_mode_and_its_session_gets_its_own_back(spark, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_EXPRESSION_CODEGEN", raising=False)
    session = spark.newSession()
    session.conf.set(FACTORY_MODE, "CODEGEN_ONLY")  # anything but the two the streams set

    def start(name):
        return (session.readStream.format("rate").option("rowsPerSecond", "1").load()
                .writeStream.format("noop").option("checkpointLocation", str(tmp_path / name)).start())

    with interpreted_stream(session):
        interpreted = start("interpreted")
    plain = start("plain")
    try:
        assert session.conf.get(FACTORY_MODE) == "CODEGEN_ONLY"
        assert _stream_mode(interpreted) == "NO_CODEGEN"
        assert _stream_mode(plain) == "CODEGEN_ONLY"
        monkeypatch.setenv("LAKEHOUSE_EXPRESSION_CODEGEN", "true")
        with interpreted_stream(session):
            switched_off = start("switched-off")
        try:
            assert _stream_mode(switched_off) == "CODEGEN_ONLY"
        finally:
            switched_off.stop()
    finally:
        interpreted.stop()
        plain.stop()


def test_a_failed_start_still_gives_the_session_its_mode_back(spark, monkeypatch):
    monkeypatch.delenv("LAKEHOUSE_EXPRESSION_CODEGEN", raising=False)
    session = spark.newSession()
    before = session.conf.get(FACTORY_MODE)
    with pytest.raises(RuntimeError, match="did not start"), interpreted_stream(session):
        assert session.conf.get(FACTORY_MODE) == "NO_CODEGEN"
        raise RuntimeError("the stream did not start")
    assert session.conf.get(FACTORY_MODE) == before


def test_sums_orderings_and_checkpoint_scans_agree_in_both_modes(spark):
    """The operators that build their expressions per task: a scan of a local checkpoint,
    a sort-based window, an aggregate over decimals (with nulls and the type's extremes)."""
    rows = [
        ("a", "2026-11-01 00:00:01", Decimal("0.000001")),
        ("a", "2026-11-01 00:00:00", Decimal("99999999999999999999999999999.999999")),
        ("a", "2026-11-01 00:00:02", None),
        ("b", "2026-11-02 10:00:00", Decimal("-5.500000")),
        ("b", "2026-11-02 09:00:00", Decimal("2.250000")),
        (None, "2026-11-03 00:00:00", Decimal("1.000000")),
    ]
    expected = {  # account: (first event by time, sum of quantities, events)
        "a": ("2026-11-01 00:00:00", Decimal("99999999999999999999999999999.999999") + Decimal("0.000001"), 3),
        "b": ("2026-11-02 09:00:00", Decimal("-3.250000"), 2),
        None: ("2026-11-03 00:00:00", Decimal("1.000000"), 1),
    }
    session = spark.newSession()

    def outcome():
        df = (session.createDataFrame(rows, "account string, at string, quantity decimal(38,6)")
              .withColumn("at", F.to_timestamp("at")).localCheckpoint())
        first = F.row_number().over(Window.partitionBy("account").orderBy("at"))
        out = (df.withColumn("_n", first)
               .groupBy("account")
               .agg(F.min(F.when(F.col("_n") == 1, F.date_format("at", "yyyy-MM-dd HH:mm:ss"))).alias("first"),
                    F.sum("quantity").alias("total"), F.count(F.lit(1)).alias("events")))
        return {r["account"]: (r["first"], r["total"], r["events"]) for r in out.collect()}

    results = {}
    for mode in ("NO_CODEGEN", "CODEGEN_ONLY"):
        session.conf.set(FACTORY_MODE, mode)
        results[mode] = outcome()
    assert results["NO_CODEGEN"] == expected
    assert results["CODEGEN_ONLY"] == expected


def test_the_switches_read_yes_and_no_the_same_way_and_default_otherwise(monkeypatch):
    from pipelines.core.settings import env_flag

    for value, expected in (("TRUE", True), ("1", True), ("on", True), ("No", False), ("0", False), ("off", False)):
        monkeypatch.setenv("LAKEHOUSE_TEST_FLAG", value)
        assert env_flag("LAKEHOUSE_TEST_FLAG", not expected) is expected
    for value in ("", "maybe"):
        monkeypatch.setenv("LAKEHOUSE_TEST_FLAG", value)
        assert env_flag("LAKEHOUSE_TEST_FLAG", True) is True
        assert env_flag("LAKEHOUSE_TEST_FLAG", False) is False
