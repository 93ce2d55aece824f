"""Pure parts of stream monitoring: progress -> metrics row, Kafka lag, SLO config and
evaluation, the status table and the plot."""
from __future__ import annotations

import json
import queue
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.core.config import ConfigError
from pipelines.monitoring.listener import _Listener, _ProgressBridge, kafka_lag, progress_row
from pipelines.monitoring.slo import Slos, StreamSlo, load_slos, parse_slos
from pipelines.monitoring.status import evaluate, lag_is_growing, plot_metrics, render_status

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

KAFKA_SOURCE = {
    "description": "KafkaV2[Subscribe[billing.events]]",
    "startOffset": {"billing.events": {"0": 0, "1": 0}},
    "endOffset": {"billing.events": {"0": 10, "1": 4}},
    "latestOffset": {"billing.events": {"0": 25, "1": 4}},
}


def progress(**kw) -> dict:
    p = {"id": "q1", "runId": "r1", "name": "bronze", "batchId": 3, "timestamp": "2026-11-28T12:00:00.000Z",
         "numInputRows": 14, "inputRowsPerSecond": 7.0, "processedRowsPerSecond": 28.0,
         "durationMs": {"triggerExecution": 500}, "eventTime": {}, "stateOperators": [], "sources": [KAFKA_SOURCE]}
    p.update(kw)
    return p


def test_progress_row_reads_rates_duration_lag_and_state():
    row = progress_row(progress(), mode="continuous")
    assert row["query_name"] == "bronze" and row["batch_id"] == 3 and row["mode"] == "continuous"
    assert (row["input_rows"], row["input_rows_per_second"], row["processed_rows_per_second"]) == (14, 7.0, 28.0)
    assert row["batch_duration_ms"] == 500 and row["batch_started_at"] == T0
    assert row["kafka_lag"] == 15 and row["watermark"] is None and row["state_rows"] is None

    silver = progress_row(progress(
        name="silver", sources=[{"description": "DeltaSource[file:/x]", "endOffset": "{}"}],
        eventTime={"watermark": "2026-11-28T11:59:50.000Z"},
        stateOperators=[{"numRowsTotal": 40, "memoryUsedBytes": 1000, "customMetrics": {"numDroppedDuplicateRows": 3}},
                        {"numRowsTotal": 2, "memoryUsedBytes": 24}]), mode="available_now")
    assert silver["kafka_lag"] is None
    assert silver["watermark"] == T0 - timedelta(seconds=10)
    assert (silver["state_rows"], silver["state_memory_bytes"], silver["hot_path_duplicates"]) == (42, 1024, 3)
    # Spark's "no watermark yet" is epoch 0
    assert progress_row(progress(eventTime={"watermark": "1970-01-01T00:00:00.000Z"}), mode="x")["watermark"] is None


class _JavaEvent:
    """Stands in for the JVM's QueryProgressEvent: only `progress().json()` is asked for."""

    def __init__(self, progress_json):
        self._json = progress_json

    def progress(self):
        return self

    def json(self):
        if isinstance(self._json, Exception):
            raise self._json
        return self._json


def test_the_listener_bridge_queues_each_progress_event_as_parsed_json_and_never_raises(caplog):
    sink: queue.Queue = queue.Queue()
    bridge = _ProgressBridge(sink)
    bridge.onQueryProgress(_JavaEvent(json.dumps(progress(batchId=7))))
    bridge.onQueryProgress(_JavaEvent(RuntimeError("py4j: connection reset")))   # the JVM call fails
    bridge.onQueryProgress(_JavaEvent("{not json"))
    bridge.onQueryStarted(object()), bridge.onQueryIdle(object()), bridge.onQueryTerminated(object())
    assert sink.get_nowait() == progress(batchId=7)
    assert sink.empty()
    assert sum("could not read a progress event" in r.message for r in caplog.records) == 2


class _PySparkEvent(_JavaEvent):
    """Stands in for PySpark's QueryProgressEvent (the path a Spark Connect session takes):
    the same answers, as attributes."""
    progress = property(_JavaEvent.progress)
    json = property(_JavaEvent.json)


def test_the_listener_s_own_callback_queues_the_same_json_and_never_raises(caplog):
    sink: queue.Queue = queue.Queue()
    listener = _Listener(sink)
    listener.onQueryProgress(_PySparkEvent(json.dumps(progress(batchId=8))))
    listener.onQueryProgress(_PySparkEvent(RuntimeError("connect: stream closed")))
    assert sink.get_nowait() == progress(batchId=8)
    assert sink.empty()
    assert sum("could not read a progress event" in r.message for r in caplog.records) == 1


def test_kafka_lag_handles_offsets_as_json_text_and_partitions_not_read_yet():
    source = {"description": "KafkaV2[Subscribe[t]]", "endOffset": '{"t": {"0": 5}}',
              "latestOffset": '{"t": {"0": 5, "1": 7}}'}
    assert kafka_lag([source]) == 7
    assert kafka_lag([{**source, "latestOffset": None}]) is None


def test_lag_growing_needs_a_steady_rise_inside_the_window():
    window = timedelta(minutes=5)
    at = [T0 + timedelta(minutes=m) for m in range(8)]
    assert lag_is_growing(list(zip(at, [0, 0, 0, 10, 20, 30, 40, 50])), window) is True
    assert lag_is_growing(list(zip(at, [50, 40, 60, 70, 80, 5, 6, 7])), window) is False   # it fell
    assert lag_is_growing(list(zip(at, [9, 9, 9, 9, 9, 9, 9, 9])), window) is False         # flat
    assert lag_is_growing(list(zip(at[:2], [1, 2])), window) is None                       # too few points
    # old growth outside the window does not count
    assert lag_is_growing(list(zip(at, [1, 2, 4, 4, 4, 4, 4, 4])), window) is False


def metric(batch, *, mode="continuous", rows=100, quarantined=None, lag=None, fresh=5.0, run="r1", minutes=0):
    return {"run_id": run, "batch_id": batch, "mode": mode, "batch_started_at": T0 + timedelta(minutes=minutes),
            "input_rows": rows, "processed_rows_per_second": 50.0, "kafka_lag": lag, "quarantined": quarantined,
            "ingestion_freshness_seconds": fresh, "event_freshness_seconds": fresh + 100, "state_rows": 7}


def test_evaluate_flags_each_slo_and_passes_healthy_streams():
    slo = StreamSlo()
    healthy = evaluate("silver", [metric(0, quarantined={"bad_json": 1}), metric(1, quarantined={})], slo)
    assert healthy.ok and healthy.quarantine_share == pytest.approx(0.005)

    noisy = evaluate("silver", [metric(0, quarantined={"bad_json": 1, "missing_field": 1}, rows=100)], slo)
    assert noisy.breaches == ("quarantine 2.00% > 1.00%",)
    at_max = evaluate("silver", [metric(0, quarantined={"bad_json": 1}, rows=100)], slo)
    assert at_max.ok and at_max.quarantine_share == pytest.approx(0.01)
    # an earlier run's quarantine does not count against the latest run
    assert evaluate("silver", [metric(0, quarantined={"x": 50}, run="r0"), metric(1, quarantined={})], slo).ok

    stale = evaluate("gold", [metric(0, fresh=75.0)], slo)
    assert stale.breaches == ("freshness 75 s > 60 s",)
    assert evaluate("gold", [metric(0, fresh=75.0, mode="available_now")], slo).ok   # catch-up runs: no freshness SLO

    lagging = evaluate("bronze", [metric(i, lag=10 * i, minutes=i) for i in range(4)], slo)
    assert lagging.breaches == ("Kafka lag growing over 5 min",) and lagging.kafka_lag == 30

    table = render_status([healthy, noisy, lagging])
    assert "BREACH: quarantine 2.00% > 1.00%" in table and "30 rising" in table and table.count(" OK") == 1


def test_slo_config_defaults_overrides_and_errors(tmp_path):
    slos = load_slos()
    assert slos.for_stream("silver") == StreamSlo(timedelta(seconds=60), timedelta(minutes=5), 0.01)
    custom = parse_slos({"version": 1, "defaults": {"max_freshness": "2 minutes"},
                         "streams": {"gold": {"max_quarantine_share": 0.05}}})
    assert custom.for_stream("gold") == StreamSlo(timedelta(minutes=2), timedelta(minutes=5), 0.05)
    assert custom.for_stream("other").max_freshness == timedelta(minutes=2)
    with pytest.raises(ConfigError, match=r"^slo.yaml: streams.gold.max_quarantine_share: expected a number between "
                                          r"0 and 1, got 5$"):
        parse_slos({"version": 1, "streams": {"gold": {"max_quarantine_share": 5}}}, "slo.yaml")
    with pytest.raises(ConfigError, match=r"^slo.yaml: defaults: unknown keys \['freshness'\] \(allowed: "):
        parse_slos({"version": 1, "defaults": {"freshness": "1 minute"}}, "slo.yaml")
    bad = tmp_path / "slo.yaml"
    bad.write_text("version: 1\ndefaults: {max_freshness: soon}\n")
    with pytest.raises(ConfigError, match=r"slo.yaml: defaults.max_freshness: expected a positive duration like "
                                          r"'10 minutes', got 'soon'$"):
        load_slos(bad)


@pytest.mark.parametrize("doc, message", [
    ({"version": 1, "defaults": ["max_freshness"]}, "defaults: expected a mapping or null, got ['max_freshness']"),
    ({"version": 1, "streams": ["gold"]}, "streams: expected a mapping of stream name to overrides, got ['gold']"),
    ({"version": 1, "streams": {"gold": "fast"}}, "streams.gold: expected a mapping or null, got 'fast'"),
    ({"version": 1, "streams": {"gold": {"lag_growth_window": "0 minutes"}}},
     "streams.gold.lag_growth_window: expected a positive duration like '10 minutes', got '0 minutes'"),
    ({"version": 1, "defaults": {"max_quarantine_share": True}},
     "defaults.max_quarantine_share: expected a number between 0 and 1, got True"),
    ({"version": 1, "defaults": {"max_quarantine_share": "1%"}},
     "defaults.max_quarantine_share: expected a number between 0 and 1, got '1%'"),
    ({"version": 1, "alerts": {}}, "unknown keys ['alerts'] (allowed: ['defaults', 'streams', 'version'])"),
    ({"defaults": {}}, "'version' is required"),
    ({"version": 2, "defaults": {}}, "version: must be 1, got 2"),
    ({"version": "1"}, "version: must be 1, got '1'"),
    ([], "expected a mapping at the top level"),
], ids=["defaults-list", "streams-list", "stream-string", "zero-window", "share-bool", "share-string", "unknown",
        "no-version", "version-2", "version-string", "top-list"])
def test_slo_config_errors_name_the_entry(doc, message):
    with pytest.raises(ConfigError) as err:
        parse_slos(doc, "slo.yaml")
    assert str(err.value) == f"slo.yaml: {message}"


def test_an_slo_file_of_another_version_is_refused(tmp_path):
    path = tmp_path / "slo.yaml"
    path.write_text("version: 2\nstreams: {silver: {}}\n")
    with pytest.raises(ConfigError) as err:
        load_slos(path)
    assert str(err.value) == f"{path}: version: must be 1, got 2"


def test_empty_slo_sections_change_nothing():
    plain = parse_slos({"version": 1})
    assert plain == Slos(StreamSlo(), {})
    assert parse_slos({"version": 1, "defaults": None, "streams": None}) == plain
    overrides = parse_slos({"version": 1, "streams": {"gold": None, "silver": {}}})
    assert overrides.for_stream("gold") == overrides.for_stream("silver") == StreamSlo()


def test_plot_writes_a_png_with_three_labelled_panels(tmp_path):
    metrics = {"bronze": [metric(i, lag=5 - i, minutes=i) | {"query_name": "bronze"} for i in range(4)],
               "silver": [metric(i, minutes=i) | {"query_name": "silver"} for i in range(4)]}
    out = plot_metrics(metrics, tmp_path / "plots" / "status.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_monitor_records_each_batch_once_and_keeps_rows_a_failed_write_did_not_store(spark, tmp_path, monkeypatch):
    from pipelines.core.tables import STREAM_METRICS
    from pipelines.monitoring.listener import StreamMonitor
    from pipelines.core.settings import Settings
    from pipelines.core.tables import Lake

    lake = Lake(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    save = lake.save
    failures = iter([RuntimeError("disk full")])

    def flaky_save(writer, name):
        if (exc := next(failures, None)) is not None:
            raise exc
        save(writer, name)

    monkeypatch.setattr(lake, "save", flaky_save)
    with StreamMonitor(spark, lake, continuous=True) as monitor:
        monitor._queue.put(progress(batchId=1))
        with pytest.raises(RuntimeError, match="disk full"):
            monitor.flush(force=True)
        monitor._queue.put(progress(batchId=2))
        assert monitor.flush(force=True) == 2          # the failed write's row comes along
        monitor._queue.put(progress(batchId=2))        # a late copy from the listener bus
        assert monitor.flush(force=True) == 0
    recorded = sorted(tuple(r) for r in lake.read(spark, STREAM_METRICS).select("query_id", "run_id", "batch_id").collect())
    assert recorded == [("q1", "r1", 1), ("q1", "r1", 2)]
