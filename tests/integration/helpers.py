"""Small helpers for the integration tests: send exact records, run jobs, read tables."""
from __future__ import annotations

from datetime import timedelta

from kafka import KafkaProducer

from pipelines.core.config import SilverConfig, load_dedup_rules
from pipelines.core.exact_json import dumps
from pipelines.core.context import JobContext, RunOptions
from pipelines.runner import ProgressReporter, run_jobs
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake

# Events in the shared billed_lakehouse fixture (tests/integration/conftest.py).
BILLED_EVENTS = 600


def event(event_id: str, account_id: str, occurred_at: str, event_type: str = "usage", **fields) -> dict:
    body = {"event_id": event_id, "event_type": event_type, "account_id": account_id,
            "occurred_at": occurred_at, "schema_version": 1}
    body.update(fields)
    return body


def usage(event_id: str, account_id: str, occurred_at: str, product: str, metric: str, quantity,
          **fields) -> dict:
    return event(event_id, account_id, occurred_at, product=product, metric=metric, quantity=quantity, **fields)


def encode(body: dict | bytes | None) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    return dumps(body).encode()


def send(settings: Settings, records: list[tuple[str | None, dict | bytes | None]]) -> None:
    """Send (key, value) pairs in order; key = account_id by contract."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5)
    try:
        for key, value in records:
            producer.send(settings.events_topic, key=key.encode() if key is not None else None, value=encode(value))
        producer.flush()
    finally:
        producer.close()


def context(settings: Settings, *, watermark_seconds: int = 2, **run) -> JobContext:
    return JobContext(settings=settings, lake=Lake(settings),
                      silver=SilverConfig(watermark_delay=timedelta(seconds=watermark_seconds)),
                      rules=load_dedup_rules(), run=RunOptions(**run))


def run(spark, ctx: JobContext, *jobs: str) -> ProgressReporter:
    return run_jobs(spark, ctx, list(jobs or ("bronze", "silver", "gold")), reporter=ProgressReporter(quiet=True),
                    log=lambda _msg: None)


def rows(spark, settings: Settings, table: str, *columns: str, where: str | None = None) -> list[tuple]:
    df = Lake(settings).read(spark, table)
    if where:
        df = df.filter(where)
    return sorted(tuple(r) for r in df.select(*columns).collect())
