"""A seeded hostile corpus through the real broker, bronze and silver.

Nothing crashes the stream; every record sent is in bronze and lands in exactly one of
silver.usage_events, silver.account_events, silver.duplicates or silver.quarantine (by
Kafka coordinates); no raw personal data from properties reaches a silver table.
"""
from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from pyspark.sql import functions as F

from pipelines import hostile
from pipelines.audit import count_homes, record_homes
from pipelines.tables import Lake
from tests.integration.helpers import context, run
from tests.unit.test_hostile_input import judge

pytestmark = pytest.mark.kafka

COUNT = 300
RAW_PII = ("jane.doe@shop.example", "203.0.113.7", "+1 415 555 0100", "ops@acme.io", "198.51.100.4", "7946 0958")


def unknown_passed(places, verdicts) -> int:
    """Records the judge cannot read (nested beyond Python's recursion) may go either way."""
    return max(0, places["usage"] + places["account"] + places["duplicate"] - verdicts[True])


def test_hostile_corpus_is_accounted_for_and_pii_never_reaches_silver(spark, lake_settings):
    records = hostile.corpus(seed=11, count=COUNT)
    assert hostile.send(records, lake_settings) == COUNT

    run(spark, context(lake_settings), "bronze", "silver")

    lake = Lake(lake_settings)
    assert lake.read(spark, "bronze.events").count() == COUNT
    places = Counter({r.home: r["count"] for r in count_homes(record_homes(spark, lake)).collect()})
    assert "" not in places, "a bronze record is in no silver table"
    assert not [home for home in places if "+" in home], f"a record is in two tables: {places}"
    assert sum(places.values()) == COUNT
    # The unit tests' independent judge of the contract agrees record by record.
    verdicts = Counter(judge(r.value, ingested=datetime.now(UTC)) for r in records)
    assert places["quarantine"] == verdicts[False] + verdicts[None] - unknown_passed(places, verdicts)
    assert places["usage"] + places["account"] + places["duplicate"] >= verdicts[True]

    for table in ("silver.usage_events", "silver.account_events", "silver.duplicates"):
        props = lake.read(spark, table).select("properties").filter(F.col("properties").isNotNull())
        leaks = props.filter(F.greatest(*[F.col("properties").contains(p) for p in RAW_PII]))
        assert leaks.count() == 0, f"raw personal data in {table}: {leaks.limit(3).collect()}"
    hashed = lake.read(spark, "silver.account_events").unionByName(
        lake.read(spark, "silver.usage_events"), allowMissingColumns=True)
    assert hashed.filter(F.col("properties").contains("email_domain_hash")).count() > 0
