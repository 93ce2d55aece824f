"""`lakehouse status`: each stream's latest figures from ops.stream_metrics against its
SLOs, and `--plot`: throughput, Kafka lag and freshness over time as a PNG."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from pipelines.core.tables import STREAM_METRICS, Lake
from pipelines.monitoring.slo import Slos, StreamSlo, load_slos

# The status and the plot read at most this many recent batches per stream (driver-side).
MAX_BATCHES = 5000


@dataclass(frozen=True)
class StreamStatus:
    name: str
    batches: int
    last_batch_at: datetime | None
    mode: str | None
    input_rows: int
    processed_rows_per_second: float | None
    kafka_lag: int | None
    lag_growing: bool | None
    ingestion_freshness_seconds: float | None
    event_freshness_seconds: float | None
    quarantine_share: float | None
    state_rows: int | None
    breaches: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.breaches


def lag_is_growing(points: list[tuple[datetime, int]], window) -> bool | None:
    """Kafka lag over the last `window` (ending at the newest point): growing when it never
    fell and ended higher than it started. None with fewer than 3 points in the window."""
    points = sorted((t, lag) for t, lag in points if lag is not None)
    if not points:
        return None
    recent = [(t, lag) for t, lag in points if t >= points[-1][0] - window]
    if len(recent) < 3:
        return None
    lags = [lag for _, lag in recent]
    return all(b >= a for a, b in zip(lags, lags[1:])) and lags[-1] > lags[0]


def evaluate(name: str, rows: list[dict], slo: StreamSlo) -> StreamStatus:
    """One stream's metric rows (oldest first) -> its status and SLO breaches."""
    last = rows[-1]
    # The latest run that read anything: a rerun that found nothing new says nothing about quality.
    reading = [r for r in rows if r["input_rows"]]
    latest_run = (reading or rows)[-1]["run_id"]
    run = [r for r in rows if r["run_id"] == latest_run]
    quarantined = sum(sum((r["quarantined"] or {}).values()) for r in run if r["quarantined"] is not None)
    counted = [r for r in run if r["quarantined"] is not None]
    rows_in = sum(r["input_rows"] for r in counted)
    share = quarantined / rows_in if counted and rows_in else None
    lag_growing = lag_is_growing([(r["batch_started_at"], r["kafka_lag"]) for r in rows], slo.lag_growth_window)
    breaches = []
    fresh = last["ingestion_freshness_seconds"]
    if last["mode"] == "continuous" and fresh is not None and fresh > slo.max_freshness.total_seconds():
        breaches.append(f"freshness {fresh:.0f} s > {slo.max_freshness.total_seconds():.0f} s")
    if lag_growing:
        breaches.append(f"Kafka lag growing over {slo.lag_growth_window.total_seconds() / 60:g} min")
    # A maximum, like max_freshness: reaching it is allowed, going over it is a breach.
    if share is not None and share > slo.max_quarantine_share:
        breaches.append(f"quarantine {share:.2%} > {slo.max_quarantine_share:.2%}")
    return StreamStatus(
        name=name, batches=len(rows), last_batch_at=last["batch_started_at"], mode=last["mode"],
        input_rows=sum(r["input_rows"] for r in run), processed_rows_per_second=last["processed_rows_per_second"],
        kafka_lag=last["kafka_lag"], lag_growing=lag_growing, ingestion_freshness_seconds=fresh,
        event_freshness_seconds=last["event_freshness_seconds"], quarantine_share=share,
        state_rows=last["state_rows"], breaches=tuple(breaches))


def read_metrics(spark: SparkSession, lake: Lake) -> dict[str, list[dict]]:
    """The newest MAX_BATCHES rows per stream, oldest first (a bounded driver read)."""
    if not lake.exists(spark, STREAM_METRICS):
        return {}
    newest = Window.partitionBy("query_name").orderBy(F.col("batch_started_at").desc(), F.col("batch_id").desc())
    rows = (lake.read(spark, STREAM_METRICS).withColumn("_n", F.row_number().over(newest))
            .filter(F.col("_n") <= MAX_BATCHES).drop("_n").collect())
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["query_name"], r["batch_started_at"], r["batch_id"])):
        out.setdefault(r["query_name"], []).append(r.asDict())
    return out


def stream_statuses(metrics: dict[str, list[dict]], slos: Slos) -> list[StreamStatus]:
    order = {"bronze": 0, "silver": 1, "gold": 2}
    return [evaluate(name, rows, slos.for_stream(name))
            for name, rows in sorted(metrics.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))]


def _num(v, fmt="{:,.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def render_status(statuses: list[StreamStatus]) -> str:
    if not statuses:
        return "status: no stream metrics yet (run a stream: lakehouse run bronze silver gold)"
    rows = [("STREAM", "BATCHES", "LAST BATCH (UTC)", "MODE", "ROWS (RUN)", "ROWS/S", "KAFKA LAG",
             "FRESH (INGEST)", "FRESH (EVENT)", "QUARANTINE", "STATE ROWS", "SLO")]
    for s in statuses:
        lag = _num(s.kafka_lag) + (" rising" if s.lag_growing else "")
        rows.append((s.name, str(s.batches), f"{s.last_batch_at:%Y-%m-%d %H:%M:%S}" if s.last_batch_at else "-",
                     s.mode or "-", _num(s.input_rows), _num(s.processed_rows_per_second), lag,
                     _age(s.ingestion_freshness_seconds), _age(s.event_freshness_seconds),
                     _num(s.quarantine_share, "{:.2%}"), _num(s.state_rows),
                     "OK" if s.ok else "BREACH: " + "; ".join(s.breaches)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("SLOs (pipelines/conf/slo.yaml): ingestion freshness in continuous mode, Kafka lag not growing, "
                 "quarantine share")
    return "\n".join(lines)


def status(spark: SparkSession, lake: Lake, *, slo_path=None) -> list[StreamStatus]:
    return stream_statuses(read_metrics(spark, lake), load_slos(slo_path))


def plot_metrics(metrics: dict[str, list[dict]], path: Path | str) -> Path:
    """Three panels over time (UTC): processing throughput per stream, Kafka lag of the
    streams reading Kafka, and ingestion/event freshness per stream."""
    # matplotlib only here: `lakehouse status --plot` is its one user, and the headless
    # backend must be chosen before pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (thr, lag, fresh) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    def floats(rows: list[dict], column: str) -> list[float | None]:
        return [None if r[column] is None else float(r[column]) for r in rows]   # decimals -> plot values

    for name, rows in metrics.items():
        times = [r["batch_started_at"] for r in rows]
        thr.plot(times, floats(rows, "processed_rows_per_second"), marker="o", ms=3, label=name)
        if any(r["kafka_lag"] is not None for r in rows):
            lag.plot(times, [r["kafka_lag"] for r in rows], marker="o", ms=3, label=f"{name} (Kafka)")
        line, = fresh.plot(times, floats(rows, "ingestion_freshness_seconds"), marker="o", ms=3,
                           label=f"{name}: ingestion")
        fresh.plot(times, floats(rows, "event_freshness_seconds"), ls="--", marker="x", ms=4, color=line.get_color(),
                   label=f"{name}: event time")
    thr.set_ylabel("throughput (rows/s)")
    thr.set_title("Stream throughput, Kafka lag and freshness per micro-batch")
    lag.set_ylabel("Kafka lag (records)")
    fresh.set_ylabel("freshness (s, log)")
    fresh.set_yscale("symlog", linthresh=1)
    fresh.set_xlabel("micro-batch start (UTC)")
    fresh.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    for ax in (thr, lag, fresh):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", fontsize=8)
    if not lag.get_legend_handles_labels()[0]:
        lag.text(0.5, 0.5, "no Kafka source in these runs", transform=lag.transAxes, ha="center")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
