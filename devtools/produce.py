"""`python -m devtools produce`: generated or recorded events to Kafka, or to stdout.

The command glue over three modules: devtools/generator.py (the seeded synthetic stream),
devtools/record_files.py (`--from-file`, and the lines `--dry-run` prints) and
devtools/sender.py (to the topic, at `--rate` if asked).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Iterable, Iterator

from devtools.generator import GeneratorOptions, format_ts, from_ms, generate, resolve_window, to_ms
from devtools.record_files import format_record_line, read_records_file
from devtools.sender import SendableRecord, TokenBucket, send
from pipelines.core.settings import Settings


@dataclass
class ProduceSummary:
    records: int
    kinds: dict[str, int]
    topic: str
    bootstrap_servers: str
    source: str
    dry_run: bool
    elapsed_s: float
    window: tuple[datetime, datetime] | None = None

    def describe(self) -> str:
        rate = self.records / self.elapsed_s if self.elapsed_s > 0 else float("inf")
        verb = "Wrote (dry run, to stdout)" if self.dry_run else f"Sent to topic {self.topic} at {self.bootstrap_servers}"
        parts = [f"{verb} {self.records} records from {self.source} in {self.elapsed_s:.1f} s ({rate:,.0f}/s)."]
        if self.window:
            parts.append(f"Event time window {format_ts(to_ms(self.window[0]))} to {format_ts(to_ms(self.window[1]))}.")
        if self.kinds:
            kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(self.kinds.items(), key=lambda kv: (-kv[1], kv[0])))
            parts.append(f"By kind: {kinds}.")
        return " ".join(parts)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share must be between 0 and 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 / RFC 3339; a naive timestamp means UTC."""
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {text!r} (e.g. 2026-04-30T12:00:00Z)") from exc
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gen = parser.add_argument_group("generator")
    gen.add_argument("--count", type=_non_negative_int, default=10_000, help="records to emit in total (default 10000)")
    gen.add_argument("--accounts", type=_positive_int, default=50, help="merchant accounts (default 50)")
    gen.add_argument("--seed", type=int, default=42, help="random seed; same seed and --start, same records (default 42)")
    gen.add_argument("--start", type=parse_timestamp, default=None,
                     help="event time of the stream start, ISO (default: now minus --span-hours)")
    gen.add_argument("--span-hours", type=_positive_float, default=48.0, help="event time covered (default 48)")
    gen.add_argument("--duplicates", type=_share, default=0.05, help="share of exact re-sends (default 0.05)")
    gen.add_argument("--gateway-retries", type=_share, default=0.03,
                     help="share of SMS gateway retries, same dedup_key (default 0.03)")
    gen.add_argument("--reopened-tickets", type=_share, default=0.02,
                     help="share of reopened tickets, same dedup_key (default 0.02)")
    gen.add_argument("--late", type=_share, default=0.02, help="share of events hours/days late (default 0.02)")
    gen.add_argument("--bad", type=_share, default=0.01, help="share of bad records, every kind (default 0.01)")
    out = parser.add_argument_group("output")
    out.add_argument("--from-file", type=Path, default=None,
                     help="send the records of this file instead of generating (JSON event or "
                          '{"key","value_b64","partition"} per line; # comments)')
    out.add_argument("--topic", default=None, help="topic (default: the events topic from settings)")
    out.add_argument("--bootstrap-servers", default=None, help="Kafka bootstrap servers (default from settings)")
    out.add_argument("--rate", type=_positive_float, default=None, help="records per second (default: unlimited)")
    out.add_argument("--dry-run", action="store_true",
                     help="print the records to stdout, one --from-file line each, instead of sending")
    out.add_argument("--progress-every", type=_positive_int, default=None,
                     help="progress line on stderr every N records (default: ~10 per run)")


def options_from_args(args: argparse.Namespace) -> GeneratorOptions:
    return GeneratorOptions(
        count=args.count,
        accounts=args.accounts,
        seed=args.seed,
        start=args.start,
        span=timedelta(hours=args.span_hours),
        duplicates=args.duplicates,
        gateway_retries=args.gateway_retries,
        reopened_tickets=args.reopened_tickets,
        late=args.late,
        bad=args.bad,
    )


def _tally(records: Iterable[SendableRecord], kinds: Counter) -> Iterator[SendableRecord]:
    for record in records:
        kinds[record.kind] += 1
        yield record


def run(args: argparse.Namespace, settings: Settings) -> ProduceSummary:
    settings = settings.with_overrides(bootstrap_servers=getattr(args, "bootstrap_servers", None))
    topic = args.topic or settings.events_topic
    window: tuple[datetime, datetime] | None = None
    if args.from_file:
        records: Iterable[SendableRecord] = read_records_file(args.from_file)
        source, total = f"file {args.from_file}", None
    else:
        # Pin the clock once so the reported window is the one generated.
        options = replace(options_from_args(args), now=datetime.now(UTC))
        start_ms, end_ms, _ = resolve_window(options)
        window = (from_ms(start_ms), from_ms(end_ms))
        records = generate(options)
        source = f"the generator (seed {options.seed}, {options.accounts} accounts)"
        total = options.count
    every = args.progress_every or max(1_000, (total or 10_000) // 10)
    kinds: Counter = Counter()
    started = time.monotonic()

    def progress(n: int) -> None:
        if n % every == 0:
            elapsed = time.monotonic() - started
            of = f"/{total}" if total else ""
            print(f"produce: {n}{of} records ({n / max(elapsed, 1e-9):,.0f}/s)", file=sys.stderr, flush=True)

    tallied = _tally(records, kinds)
    if args.dry_run:
        n = 0
        bucket = TokenBucket(args.rate) if args.rate else None
        out = sys.stdout
        for record in tallied:
            if bucket:
                bucket.acquire()
            out.write(format_record_line(record) + "\n")
            n += 1
            progress(n)
        out.flush()
    else:
        n = send(tallied, settings, topic=topic, rate=args.rate, progress=progress)
    summary = ProduceSummary(
        records=n,
        kinds=dict(kinds),
        topic=topic,
        bootstrap_servers=settings.bootstrap_servers,
        source=source,
        dry_run=bool(args.dry_run),
        elapsed_s=time.monotonic() - started,
        window=window,
    )
    print(summary.describe(), file=sys.stderr, flush=True)
    return summary
