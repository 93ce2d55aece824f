"""What the stream monitor's listener costs per progress event: PySpark's own bridge against
the monitor's light one (`pipelines/monitoring/listener.py`, `_ProgressBridge`).

Run by hand from the repository root (no broker needed):

    .venv/bin/python -m bench.bench_listener                  # 7 rounds of 20 s each way
    .venv/bin/python -m bench.bench_listener --seconds 10 --rounds 3

Every stream `lakehouse run` starts has the monitor's listener, and Spark calls it after
every micro-batch (and every few seconds when a stream is idle). PySpark's bridge turns each
event into Python objects field by field before a listener sees it; the monitor needs only
the event's JSON. In one session, this script runs a rate stream into the `noop` sink with a
--trigger-ms trigger for --seconds, once with each listener registered, alternating, and
counts what the listener made the driver do per event: Py4J commands sent from threads other
than the main one (the stream itself makes none: no foreachBatch), Java exceptions converted
to Python (Py4J iteration over a Java collection ends in one), and the CPU seconds of the Python process and of the JVM over the window (the JVM's include
the stream's own work, the same both ways). Round 0 warms up and is left out.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

from bench.bench_common import machine_info, machine_line, positive_int, say
from pipelines.core.session import build_spark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=positive_int, default=20, help="stream run per round and way (default 20)")
    p.add_argument("--rounds", type=positive_int, default=7, help="timed rounds per way (default 7)")
    p.add_argument("--trigger-ms", type=positive_int, default=250, help="the stream's trigger interval (default 250)")
    return p.parse_args(argv)


class Counting:
    """Py4J commands and Java exceptions of threads other than the main one, counted by
    wrapping Py4J's one sending method (this script only)."""

    def __init__(self):
        from py4j import clientserver

        self.commands = self.exceptions = 0
        self._lock = threading.Lock()
        self._send = clientserver.ClientServerConnection.send_command
        counting = self

        def send_command(conn, command):
            if threading.current_thread() is not threading.main_thread():
                with counting._lock:
                    counting.commands += 1
                    counting.exceptions += "\nexceptionString\n" in command
            return counting._send(conn, command)

        clientserver.ClientServerConnection.send_command = send_command

    def take(self) -> tuple[int, int]:
        with self._lock:
            out, self.commands, self.exceptions = (self.commands, self.exceptions), 0, 0
        return out


def listeners(sink: "queue.Queue[dict]"):
    """name -> a StreamingQueryListener that queues each progress event's JSON: PySpark's
    bridge (the monitor's listener before) and the monitor's own."""
    from pyspark.sql.streaming import StreamingQueryListener

    from pipelines.monitoring import listener as monitor

    class PySparks(StreamingQueryListener):
        def onQueryStarted(self, event):
            pass

        def onQueryProgress(self, event):
            sink.put(json.loads(event.progress.json))

        def onQueryIdle(self, event):
            pass

        def onQueryTerminated(self, event):
            pass

    return {"pyspark bridge": PySparks(), "monitor bridge": monitor._Listener(sink)}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_window(spark, listener, counting: Counting, sink, seconds: int, trigger_ms: int) -> dict:
    jvm_pid = int(spark._jvm.java.lang.ProcessHandle.current().pid())
    spark.streams.addListener(listener)
    try:
        query = (spark.readStream.format("rate").option("rowsPerSecond", 200).load()
                 .writeStream.format("noop").trigger(processingTime=f"{trigger_ms} milliseconds").start())
        time.sleep(2)   # the stream's start and first batches are not counted
        while not sink.empty():
            sink.get_nowait()
        counting.take()
        py0, jvm0, wall0 = time.process_time(), process_cpu_seconds(jvm_pid), time.monotonic()
        time.sleep(seconds)
        py1, jvm1, wall1 = time.process_time(), process_cpu_seconds(jvm_pid), time.monotonic()
        commands, exceptions = counting.take()
        events = sink.qsize()
        query.stop()
    finally:
        spark.streams.removeListener(listener)
    time.sleep(1)
    per = max(events, 1)
    return {"events": events, "commands_per_event": commands / per, "exceptions_per_event": exceptions / per,
            "python_cpu_ms_per_event": 1000 * (py1 - py0) / per, "jvm_cpu_ms_per_event": 1000 * (jvm1 - jvm0) / per,
            "wall_s": wall1 - wall0}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spark = build_spark("bench-listener")
    machine = machine_info(spark)
    counting = Counting()
    sink: queue.Queue = queue.Queue()
    ways = listeners(sink)
    names = tuple(ways)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds + 1):
        for name in (names if r % 2 == 0 else names[::-1]):
            got = one_window(spark, ways[name], counting, sink, args.seconds, args.trigger_ms)
            if r:
                runs[name].append(got)
            say(f"  round {r} {name}: {got['events']} events, {got['commands_per_event']:.0f} Py4J commands and "
                f"{got['exceptions_per_event']:.1f} exceptions an event, "
                f"Python CPU {got['python_cpu_ms_per_event']:.1f} ms, JVM CPU {got['jvm_cpu_ms_per_event']:.1f} ms an event"
                + ("  (warm-up)" if not r else ""))
    spark.stop()
    print()
    print(machine_line(machine))
    print(f"rate stream into noop, trigger {args.trigger_ms} ms, {args.seconds} s a round, {args.rounds} rounds "
          "after a warm-up, alternating; medians over the rounds:")
    print()
    print("| listener | events a round | Py4J commands an event | Java exceptions an event "
          "| driver Python CPU an event (ms) | JVM CPU an event (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in names:
        med = {k: statistics.median(run[k] for run in runs[name]) for k in runs[name][0]}
        print(f"| {name} | {med['events']:.0f} | {med['commands_per_event']:.0f} | {med['exceptions_per_event']:.1f} "
              f"| {med['python_cpu_ms_per_event']:.1f} | {med['jvm_cpu_ms_per_event']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
