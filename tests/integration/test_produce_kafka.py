"""`devtools.sender.send` against the real local broker: what goes in comes back byte for byte."""
from __future__ import annotations

import base64
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Iterator

import pytest

from devtools.generator import GeneratorOptions, ProducedRecord, generate
from devtools.record_files import FileRecord, read_records_file
from devtools.sender import send
from pipelines.core.settings import Settings

pytestmark = pytest.mark.kafka

PARTITIONS = 3


@pytest.fixture
def topic(kafka_settings: Settings) -> Iterator[str]:
    from kafka import KafkaAdminClient

    name = f"test.produce.{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers, client_id="test-produce")
    try:
        admin.create_topics({name: {"num_partitions": PARTITIONS, "replication_factor": 1}})
        admin.wait_for_topics([name], timeout_ms=30_000)
        yield name
        admin.delete_topics([name])
    finally:
        admin.close()


def consume_all(settings: Settings, topic: str, expected: int) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=15_000,
    )
    try:
        out = []
        for message in consumer:
            out.append(message)
            if len(out) >= expected:
                break
        return out
    finally:
        consumer.close()


def test_generated_batch_round_trips(kafka_settings: Settings, topic: str) -> None:
    opts = GeneratorOptions(
        count=400, accounts=8, seed=11, bad=0.1,
        start=datetime(2026, 4, 30, 12, tzinfo=UTC), now=datetime(2026, 5, 2, 12, tzinfo=UTC),
    )
    records = list(generate(opts))
    assert any(r.value is None for r in records) and any(r.kind == "bad:not_utf8" for r in records)

    assert send(records, kafka_settings, topic=topic) == len(records)
    messages = consume_all(kafka_settings, topic, len(records))

    assert len(messages) == len(records)
    # Same key, same partition: per key, Kafka keeps the order in which they were sent.
    sent_by_key: dict[bytes | None, list[bytes | None]] = defaultdict(list)
    for r in records:
        sent_by_key[r.key].append(r.value)
    got_by_key: dict[bytes | None, list[bytes | None]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        got_by_key[m.key].append(m.value)
    assert got_by_key == sent_by_key


def test_file_batch_round_trips_with_partitions(kafka_settings: Settings, topic: str, tmp_path: Path) -> None:
    raw_value = b"\xff\xfe\x00binary"
    path = tmp_path / "records.jsonl"
    path.write_bytes(
        b"# json events are sent as their own bytes\n"
        b'{"event_id": "e-1", "account_id": "acct_file", "event_type": "usage", "quantity": 3.25}\n'
        b'{"event_id":"e-2","account_id":42}\n'
        b"\n"
        + json.dumps({"key": "acct_raw", "value_b64": base64.b64encode(raw_value).decode(), "partition": 2}).encode()
        + b"\n"
        b'{"key": "acct_tombstone", "value_b64": null, "partition": 1}\n'
    )
    records: list[FileRecord] = list(read_records_file(path))

    assert send(records, kafka_settings, topic=topic) == 4
    messages = consume_all(kafka_settings, topic, 4)

    got = {(m.key, m.value): m.partition for m in messages}
    assert set(got) == {
        (b"acct_file", b'{"event_id": "e-1", "account_id": "acct_file", "event_type": "usage", "quantity": 3.25}'),
        (None, b'{"event_id":"e-2","account_id":42}'),
        (b"acct_raw", raw_value),
        (b"acct_tombstone", None),
    }
    assert got[(b"acct_raw", raw_value)] == 2
    assert got[(b"acct_tombstone", None)] == 1


def test_rate_limited_send(kafka_settings: Settings, topic: str) -> None:
    import time

    records = [ProducedRecord(b"k", f'{{"n":{i}}}'.encode(), "event") for i in range(60)]
    started = time.monotonic()
    assert send(records, kafka_settings, topic=topic, rate=100) == 60
    # 10 records of burst, then 50 at 100/s.
    assert time.monotonic() - started >= 0.45
