"""Sends records to Kafka (kafka-python, settings from pipelines/core/kafka_clients.py), at a
steady rate if asked; the key and value bytes go out exactly as given."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Protocol

from pipelines.core import kafka_clients
from pipelines.core.settings import Settings


class SendableRecord(Protocol):
    key: bytes | None
    value: bytes | None
    kind: str


class ProduceError(RuntimeError):
    """Producing failed; the message names the broker/topic/file and what to do."""


class TokenBucket:
    """Average `rate` acquisitions per second with a short burst; sleeps, never spins."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        # ~100 ms worth of burst smooths timer jitter without visible clumping.
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.capacity
        self._last = clock()

    def acquire(self, n: float = 1.0) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return
        wait = (n - self._tokens) / self.rate
        self._sleep(wait)
        # The bucket is empty at the moment the wait ends; re-reading the clock and retrying
        # instead could spin on float rounding. Any oversleep is credited on the next call.
        self._tokens = 0.0
        self._last = now + wait


def send(
    records: Iterable[SendableRecord],
    settings: Settings,
    *,
    topic: str | None = None,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Send every record (key/value bytes as given) and flush; returns how many were sent."""
    from kafka.errors import KafkaError

    topic = topic or settings.events_topic
    servers = settings.bootstrap_servers
    unreachable = (
        f"Kafka broker not reachable at {servers} (bootstrap servers); start it with "
        f"`make kafka-start` or set KAFKA_BOOTSTRAP_SERVERS / --bootstrap-servers"
    )
    try:
        producer = kafka_clients.new_producer(settings, **kafka_clients.producer_tuning(client_id="lakehouse-produce"))
    except KafkaError as exc:
        raise ProduceError(f"{unreachable} ({exc})") from exc
    bucket = TokenBucket(rate) if rate else None
    failures: list[BaseException] = []
    sent = 0
    try:
        try:
            # Fail fast and clearly: metadata for the topic proves the broker answers.
            producer.partitions_for(topic)
        except KafkaError as exc:
            raise ProduceError(f"{unreachable}; could not get metadata for topic {topic!r} ({exc})") from exc
        for record in records:
            if failures:
                break
            if bucket:
                bucket.acquire()
            partition = getattr(record, "partition", None)
            try:
                future = producer.send(topic, key=record.key, value=record.value, partition=partition)
            except AssertionError as exc:  # kafka-python validates partitions with asserts
                raise ProduceError(f"cannot send to {topic!r} partition {partition}: {exc}") from exc
            except KafkaError as exc:
                raise ProduceError(f"sending to {topic!r} at {servers} failed after {sent} records: {exc}") from exc
            future.add_errback(failures.append)
            sent += 1
            if progress:
                progress(sent)
        producer.flush(timeout=120)
    except KafkaError as exc:
        raise ProduceError(f"sending to {topic!r} at {servers} failed after {sent} records: {exc}") from exc
    finally:
        producer.close(timeout=10)
    if failures:
        raise ProduceError(
            f"{len(failures)} record(s) to {topic!r} at {servers} were not acknowledged; first error: {failures[0]!r}"
        )
    return sent
