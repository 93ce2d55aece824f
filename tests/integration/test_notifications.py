"""The notification outbox against the real broker: staged once, on the topic once, read
back from Kafka, across reruns, a crash between send and mark, and a fenced publisher."""
from __future__ import annotations

import uuid
from datetime import datetime

import jsonschema
import pytest

from pipelines.rules import notifications as notify
from pipelines.core.contract import schemas_dir
from pipelines.rules.notifications import (
    NotificationError, close_publishers, notification_id, publish_pending, read_topic, stage_notifications, stage_rows,
)
from pipelines.core.tables import Lake

pytestmark = pytest.mark.kafka


@pytest.fixture
def settings(lake_settings):
    return lake_settings.with_overrides(notifications_topic=f"test.notifications.{uuid.uuid4().hex[:10]}")


def note(n: int, account: str = "acct-1") -> dict:
    return {"notification_id": notification_id("test.note", account, f"k{n}"), "type": "test.note",
            "account_id": account, "occurred_at": datetime(2026, 1, 1, 0, 0, n), "trigger_event_ids": [f"e{n}"],
            "payload": f'{{"n": {n}, "amount": "1.10"}}'}


def ids_on(settings) -> list[str]:
    return sorted(r["value"]["notification_id"] for r in read_topic(settings, settings.notifications_topic))


def test_staged_once_published_once_across_reruns(spark, settings):
    import json

    lake = Lake(settings)
    assert stage_notifications(spark, lake, stage_rows(spark, [note(1), note(2), note(1)])) == 2
    assert stage_notifications(spark, lake, stage_rows(spark, [note(1), note(2), note(3)])) == 1
    assert publish_pending(spark, lake, settings) == 3
    assert publish_pending(spark, lake, settings) == 0
    assert stage_notifications(spark, lake, stage_rows(spark, [note(3)])) == 0
    close_publishers()   # a fresh process
    assert publish_pending(spark, lake, settings) == 0
    expected = sorted(note(n)["notification_id"] for n in (1, 2, 3))
    assert ids_on(settings) == expected
    records = read_topic(settings, settings.notifications_topic)
    schema = json.loads((schemas_dir() / "notifications" / "v1.json").read_text())
    for r in records:
        jsonschema.validate(r["value"], schema)
        assert r["key"] == "acct-1" and r["headers"]["lakehouse-id"] == r["value"]["notification_id"]
    assert {r["value"]["occurred_at"] for r in records} == {f"2026-01-01T00:00:0{n}.000000Z" for n in (1, 2, 3)}
    assert Lake(settings).read(spark, "gold.notifications").filter("published_at IS NULL").count() == 0


def test_a_crash_between_send_and_mark_does_not_send_again(spark, settings, monkeypatch):
    lake = Lake(settings)
    stage_notifications(spark, lake, stage_rows(spark, [note(1), note(2)]))

    def crash(*_args, **_kwargs):
        raise RuntimeError("killed after the send, before the mark")

    monkeypatch.setattr(notify, "_mark", crash)
    with pytest.raises(RuntimeError, match="killed after the send"):
        publish_pending(spark, lake, settings)
    monkeypatch.undo()
    assert ids_on(settings) == sorted(note(n)["notification_id"] for n in (1, 2))   # on the topic, unmarked
    close_publishers()
    stage_notifications(spark, lake, stage_rows(spark, [note(3)]))
    assert publish_pending(spark, lake, settings) == 1   # only the new one is sent; the two are marked
    assert ids_on(settings) == sorted(note(n)["notification_id"] for n in (1, 2, 3))
    assert lake.read(spark, "gold.notifications").filter("published_at IS NULL").count() == 0


def test_a_publisher_fenced_mid_send_leaves_nothing_visible(spark, settings, monkeypatch):
    """A second process starts publishing while the first is between its send and commit:
    the first is fenced, its transaction aborted; the second sends each row once."""
    lake = Lake(settings)
    stage_notifications(spark, lake, stage_rows(spark, [note(1), note(2)]))
    first = notify._publisher(settings, settings.notifications_topic)
    first._connect()
    first.producer.begin_transaction()
    for n in (1, 2):
        first.producer.send(settings.notifications_topic, key=b"acct-1", value=b"{}",
                            headers=[("lakehouse-id", note(n)["notification_id"].encode())])
    first.producer.flush()
    # The second publisher: a different process, i.e. new clients with the same transactional id.
    notify._PUBLISHERS.clear()
    assert publish_pending(spark, lake, settings) == 2
    assert ids_on(settings) == sorted(note(n)["notification_id"] for n in (1, 2))
    from kafka.errors import KafkaError
    with pytest.raises(KafkaError):
        first.producer.commit_transaction()
    first.close()
    assert ids_on(settings) == sorted(note(n)["notification_id"] for n in (1, 2))


def test_a_row_breaking_the_contract_is_a_clear_error(spark, settings):
    bad = dict(note(1), payload="[1, 2]")
    with pytest.raises(NotificationError, match=r"breaks schemas/notifications/v1.json: payload must be a JSON object"):
        stage_notifications(spark, Lake(settings), stage_rows(spark, [bad]))


def test_marking_sets_only_the_named_unmarked_rows(spark, settings):
    lake = Lake(settings)
    stage_notifications(spark, lake, stage_rows(spark, [note(n) for n in (1, 2, 3, 4)]))
    ids = {n: note(n)["notification_id"] for n in (1, 2, 3, 4)}
    earlier = datetime(2026, 1, 2, 3, 4, 5)
    # Another publisher marked row 2 first.
    lake.delta(spark, "gold.notifications").update(condition=f"notification_id = '{ids[2]}'",
                                                   set={"published_at": f"timestamp'{earlier.isoformat(sep=' ')}'"})
    notify._mark(spark, lake, notify.notifications_outbox(settings), [ids[1], ids[2], ids[3]])
    marks = {r["notification_id"]: r["published_at"]
             for r in lake.read(spark, "gold.notifications").select("notification_id", "published_at").collect()}
    assert marks[ids[2]] == earlier            # left as the other publisher set it
    assert marks[ids[4]] is None               # not named: still pending
    assert marks[ids[1]] is not None and marks[ids[3]] is not None and marks[ids[1]] != earlier
    assert len(marks) == 4
