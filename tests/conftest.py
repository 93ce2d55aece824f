"""Shared fixtures: one local SparkSession for the whole run, the real local broker."""
from __future__ import annotations

import os
import uuid

import pytest

from pipelines.core.settings import Settings


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipelines.core.batch_expressions import FACTORY_MODE
    from pipelines.core.session import build_spark

    os.environ.setdefault("LAKEHOUSE_ROOT", str(tmp_path_factory.mktemp("lake-default")))
    # Every query interpreted, as production runs a stream's small batches: the tests' data
    # is a few rows, and generating Java source for it costs about a tenth of the end-to-end
    # modules' time (bench/RESULTS.md, "Bronze interpreted, and the suite's session"). The contract
    # oracle runs with Spark's default instead, so one end-to-end test runs production's
    # mix, and test_batch_expressions checks money in both modes.
    session = build_spark("lakehouse-tests", shuffle_partitions=2, extra_conf={FACTORY_MODE: "NO_CODEGEN"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def kafka_settings() -> Settings:
    """The shared broker `make test` starts; started here too if it is not running."""
    from devtools import kafka_local

    settings = Settings()
    kafka_local.start(settings)
    return settings


@pytest.fixture
def topic(kafka_settings) -> str:
    """A fresh topic per test, so tests never see each other's records."""
    from pipelines.core import kafka_topics

    name = f"test.events.{uuid.uuid4().hex[:10]}"
    kafka_topics.ensure_topics(kafka_settings, {name: 3})
    return name


@pytest.fixture
def lake_settings(tmp_path, kafka_settings, topic) -> Settings:
    return kafka_settings.with_overrides(lake_root=str(tmp_path / "lake"), events_topic=topic)
