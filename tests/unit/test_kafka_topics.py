"""Topic creation (pipelines/core/kafka_topics.py) against a recording admin client: what is
asked of the cluster. The local broker's answers are in tests/integration/test_kafka_local.py."""
from __future__ import annotations

import contextlib

import pytest

from pipelines.core import kafka_topics
from pipelines.core.settings import Settings


class RecordingAdmin:
    def __init__(self, existing: set[str]):
        self.existing = existing
        self.requests: list[dict] = []

    def list_topics(self):
        return sorted(self.existing)

    def describe_topics(self, names):
        return [{"name": n, "partitions": [{}]} for n in names]

    def create_topics(self, request):
        self.requests.append(request)


@pytest.fixture
def admin(monkeypatch) -> RecordingAdmin:
    client = RecordingAdmin(existing={"billing.events"})
    monkeypatch.setattr(kafka_topics, "admin", lambda settings: contextlib.nullcontext(client))
    return client


def test_a_new_topic_takes_the_cluster_s_replication_factor_and_the_named_partitions(admin: RecordingAdmin) -> None:
    created = kafka_topics.ensure_topics(Settings(), {"billing.events": 1, "billing.notifications": 3},
                                         configs={"retention.ms": "-1"})

    assert created == ["billing.notifications"]
    assert admin.requests == [{"billing.notifications": {
        # -1: the brokers' default.replication.factor, never a count fixed in code (one
        # replica on a production cluster loses unconsumed records with its broker).
        "num_partitions": 3, "replication_factor": -1, "configs": {"retention.ms": "-1"}}}]
