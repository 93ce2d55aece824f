"""Topic creation through the admin client (pipelines/core/kafka_clients.py gives it its settings).

The notification publisher makes sure its topic exists before it sends; the development
tools (the demo, the tests' fixtures, the benches) create theirs the same way. On a
managed cluster topic admin may be forbidden: callers that can do without it (the
publisher) log the failure and rely on the topic existing.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from kafka import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipelines.core import kafka_clients
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)


# CreateTopics' "the brokers' default.replication.factor" (KIP-464, Kafka 2.4).
CLUSTER_DEFAULT = -1


class TopicAdminError(RuntimeError):
    """No Kafka broker answered the admin client."""


@contextlib.contextmanager
def admin(settings: Settings, *, client_id: str = "lakehouse-admin",
          timeout_ms: int = 10_000) -> Iterator[KafkaAdminClient]:
    """An admin client of `settings.bootstrap_servers`, closed on exit; TopicAdminError
    when no broker answers within `timeout_ms`."""
    try:
        # bootstrap_timeout_ms is kafka-python 3's; kafka_clients drops it for 2.x.
        client = kafka_clients.new_admin(settings, client_id=client_id,
                                         request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms)
    except KafkaError as exc:  # kafka-python 3 times out, 2.x raises NoBrokersAvailable
        raise TopicAdminError(
            f"no Kafka broker answering at {settings.bootstrap_servers} (locally: `make kafka-start`)"
        ) from exc
    try:
        yield client
    finally:
        client.close()


def ensure_topics(settings: Settings, topics: dict[str, int], *, configs: dict[str, str] | None = None) -> list[str]:
    """Create the missing topics (name -> partitions); returns the names it created.

    `configs` are topic-level settings for the topics this call creates, e.g.
    devtools.kafka_local.RETAIN_EVERYTHING for a topic that must hold more than the
    broker's per-partition cap. Existing topics are left alone, even with another
    partition count: adding partitions would silently move keys to other partitions.
    Partitions are named here; replicas are the cluster's own policy: a topic gets the
    brokers' `default.replication.factor` (Kafka 2.4 or later), three on a production
    cluster and one on the local single-node broker (devtools/kafka_local.py). A fixed
    count here would either fail locally or leave a production topic on one broker, where
    losing that broker loses the notifications not yet consumed.
    """
    with admin(settings) as client:
        existing = set(client.list_topics())
        _warn_on_partition_mismatch(client, {n: p for n, p in topics.items() if n in existing})
        created: list[str] = []
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:
                client.create_topics({name: {"num_partitions": partitions, "replication_factor": CLUSTER_DEFAULT,
                                             "configs": dict(configs or {})}})
                created.append(name)
            except TopicAlreadyExistsError:
                pass  # created concurrently (or auto-created by a client): fine
        # kafka-python >= 3 can wait for leaders; without it the first produce just retries.
        wait_for_topics = getattr(client, "wait_for_topics", None)
        if created and wait_for_topics is not None:
            wait_for_topics(created, timeout_ms=30_000)
        if created:
            log.info("created kafka topics: %s", ", ".join(created))
        return created


def _warn_on_partition_mismatch(client: KafkaAdminClient, wanted: dict[str, int]) -> None:
    if not wanted:
        return
    for topic in client.describe_topics(list(wanted)):
        have = len(topic.get("partitions") or [])
        if have != wanted.get(topic.get("name"), have):
            log.warning(
                "kafka topic %s has %s partitions, expected %s; recreate it to change",
                topic["name"], have, wanted[topic["name"]],
            )
