"""Continuous mode restarts a failed stream from its checkpoint, within a budget.

The streams here are real (Spark's rate source into a foreachBatch); only the job
registry is patched, to add a stream that fails on purpose.
"""
from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from pipelines import runner
from pipelines.core.context import JobContext, RunOptions
from pipelines.core.settings import Settings


def test_a_failure_is_told_in_one_line():
    assert runner._reason(RuntimeError("Cannot invoke x because y is null\nat Foo.bar")) == \
        "Cannot invoke x because y is null"
    assert runner._reason(RuntimeError("proxy failed: Traceback (most recent call last):\n  File x\n"
                                       "ValueError: bad\nSQLSTATE: 39000")) == "ValueError: bad"
    assert runner._reason(RuntimeError("")) == "RuntimeError"


def test_the_policy_allows_the_budget_inside_the_window_then_refuses():
    policy = runner.RestartPolicy(budget=2, window_s=60)
    assert policy.allow("silver", 0.0) and policy.allow("silver", 10.0)
    assert not policy.allow("silver", 20.0)           # a third failure inside 60 s
    assert policy.allow("bronze", 20.0)               # budgets are per stream
    assert policy.allow("silver", 200.0)              # the old failures have left the window
    assert policy.failures["silver"] == [200.0]


class FlakyStream:
    """A rate stream whose foreachBatch raises on the calls listed in `fail_calls`."""

    def __init__(self, checkpoint: str, fail_calls: set[int]):
        self.checkpoint, self.fail_calls = checkpoint, fail_calls
        self.calls = 0
        self.committed: list[int] = []
        self.starts = 0

    def body(self, df, batch_id: int) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError(f"injected failure in batch {batch_id}")
        self.committed.append(batch_id)

    def start(self, spark, ctx):
        self.starts += 1
        return (spark.readStream.format("rate").option("rowsPerSecond", "5").load()
                .writeStream.queryName("flaky").foreachBatch(self.body)
                .option("checkpointLocation", self.checkpoint)
                .trigger(processingTime="500 milliseconds").start())


def _stop_after(spark, stream: FlakyStream, batches: int, timeout_s: float = 120) -> threading.Thread:
    """Stop the (current) flaky query once `batches` batches have committed."""
    def run():
        deadline = time.monotonic() + timeout_s
        while len(stream.committed) < batches and time.monotonic() < deadline:
            time.sleep(0.2)
        for q in spark.streams.active:
            if q.name == "flaky":
                q.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def continuous_ctx(tmp_path) -> JobContext:
    ctx = JobContext.from_settings(Settings().with_overrides(lake_root=str(tmp_path / "lake")))
    return replace(ctx, run=RunOptions(continuous=True))


def test_a_failed_stream_is_restarted_from_its_checkpoint(spark, tmp_path, monkeypatch, continuous_ctx):
    stream = FlakyStream(str(tmp_path / "cp"), fail_calls={2})
    monkeypatch.setitem(runner.JOBS, "flaky", stream.start)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_S", 0.1)
    said: list[str] = []
    stopper = _stop_after(spark, stream, batches=4)

    runner.run_jobs(spark, continuous_ctx, ["flaky"], reporter=runner.ProgressReporter(quiet=True), log=said.append)
    stopper.join()

    assert stream.starts == 2
    assert "flaky: stream failed (RuntimeError: injected failure in batch 1); restarting from its checkpoint" in "\n".join(said)
    # The failed batch was not committed, so the restarted query replays it: no batch is
    # skipped and none is committed twice.
    assert stream.committed[:2] == [0, 1]
    assert stream.committed == sorted(set(stream.committed))


def test_a_stream_failing_past_the_budget_ends_the_run(spark, tmp_path, monkeypatch, continuous_ctx):
    stream = FlakyStream(str(tmp_path / "cp"), fail_calls=set(range(1, 100)))
    monkeypatch.setitem(runner.JOBS, "flaky", stream.start)
    monkeypatch.setattr(runner, "RESTART_BACKOFF_S", 0.1)

    with pytest.raises(Exception, match="injected failure in batch 0"):
        runner.run_jobs(spark, continuous_ctx, ["flaky"], reporter=runner.ProgressReporter(quiet=True),
                        log=lambda _m: None)

    assert stream.starts == runner.RESTART_BUDGET + 1
    assert stream.committed == []
    assert not [q for q in spark.streams.active if q.name == "flaky"]
