"""Fixtures shared by the integration modules."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from pipelines.core import kafka_topics
from devtools import generator, sender
from tests.integration.helpers import BILLED_EVENTS, context, run


@pytest.fixture(scope="session")
def billed_lakehouse(spark, kafka_settings, tmp_path_factory):
    """bronze -> silver -> gold -> billing -> export over forty days of synthetic events
    (a closed month, so there are final lines and an export), built once for the modules
    that only read what the jobs made: the analyst readers and the notebooks. Tests that
    change a lake build their own."""
    topic = f"test.billed.{uuid.uuid4().hex[:10]}"
    kafka_topics.ensure_topics(kafka_settings, {topic: 2})
    records = generator.generate(generator.GeneratorOptions(count=BILLED_EVENTS, accounts=6, seed=5,
                                                            span=timedelta(days=40), now=datetime.now(timezone.utc)))
    settings = kafka_settings.with_overrides(lake_root=str(tmp_path_factory.mktemp("billed") / "lake"),
                                             events_topic=topic)
    sender.send(records, settings)
    run(spark, context(settings), "bronze", "silver", "gold", "billing", "export")
    return settings
