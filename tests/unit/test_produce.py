"""The synthetic event generator, record files and rate limiting: pure, no Kafka, no Spark."""
from __future__ import annotations

import argparse
import base64
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pipelines.core import kafka_clients
from devtools import generator, produce, record_files, sender
from devtools.generator import (
    BAD_REASONS,
    PLANS,
    REQUIRED_FIELDS,
    USAGE_REQUIRED_FIELDS,
    GeneratorOptions,
    ProducedRecord,
    generate,
    kind_family,
)
from devtools.record_files import RecordFileError, format_record_line, parse_record_line, read_records_file
from devtools.sender import ProduceError, TokenBucket
from pipelines.core.settings import REPO_ROOT, Settings

SCHEMA = json.loads((REPO_ROOT / "schemas" / "events" / "v1.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
# jsonschema only checks "format": "date-time" with an optional extra package; check it here.
RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
QUANTITY_TEXT = re.compile(rb'"quantity":([^,}]*)')

# Crosses the April/May boundary so reopened tickets can land in the next month.
START = datetime(2026, 4, 30, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 5, 2, 12, 0, tzinfo=UTC)
GOOD_FAMILIES = {"event", "late", "duplicate", "gateway_retry", "reopened_ticket"}
TEN_MINUTES_MS = 10 * 60 * 1000


def options(**overrides) -> GeneratorOptions:
    base = dict(count=6000, accounts=30, seed=7, start=START, now=NOW)
    return GeneratorOptions(**{**base, **overrides})


@pytest.fixture(scope="module")
def records() -> list[ProducedRecord]:
    return list(generate(options()))


def ms(occurred_at: str) -> int:
    return generator.to_ms(datetime.fromisoformat(occurred_at))


def good(records: list[ProducedRecord]) -> list[tuple[int, ProducedRecord, dict]]:
    return [
        (i, r, json.loads(r.value))
        for i, r in enumerate(records)
        if kind_family(r.kind) in GOOD_FAMILIES
    ]


# --------------------------------------------------------------------------- determinism and volume


def test_same_seed_same_records() -> None:
    assert list(generate(options(count=800))) == list(generate(options(count=800)))


def test_other_seed_other_records() -> None:
    assert list(generate(options(count=800))) != list(generate(options(count=800, seed=8)))


def test_default_start_ends_the_stream_at_the_generation_clock() -> None:
    opts = GeneratorOptions(count=10, now=NOW)
    start_ms, end_ms, now_ms = generator.resolve_window(opts)
    assert end_ms == now_ms == generator.to_ms(NOW)
    assert end_ms - start_ms == 48 * 3600 * 1000


def test_emits_exactly_count_records(records: list[ProducedRecord]) -> None:
    assert len(records) == 6000
    assert list(generate(options(count=0))) == []
    # Fewer records than the onboarding needs: still exactly `count`, no crash.
    assert len(list(generate(options(count=5, accounts=50)))) == 5


def test_kind_counts_follow_the_shares(records: list[ProducedRecord]) -> None:
    n = len(records)
    families = Counter(kind_family(r.kind) for r in records)
    assert families["duplicate"] == round(n * 0.05)
    assert families["bad"] == round(n * 0.01)
    # Retries, reopens and late events fall back to a plain event when the stream has no
    # material yet (e.g. right after the start), so they are close to, not exactly, the share.
    for family, share in (("gateway_retry", 0.03), ("reopened_ticket", 0.02), ("late", 0.02)):
        assert 0.8 * n * share <= families[family] <= n * share, family
    assert families["event"] >= n * (1 - 0.13)


def test_every_bad_reason_and_every_variant_appears(records: list[ProducedRecord]) -> None:
    kinds = Counter(r.kind for r in records)
    assert {f"bad:{reason}" for reason in BAD_REASONS} <= set(kinds)
    assert kinds["gateway_retry"] > kinds["gateway_retry:outside_window"] > 0
    assert kinds["reopened_ticket"] > 0 and kinds["reopened_ticket:next_month"] > 0


def test_shares_are_validated() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        options(late=1.5)
    with pytest.raises(ValueError, match="more than 1"):
        options(duplicates=0.5, bad=0.6)
    with pytest.raises(ValueError, match="accounts"):
        options(accounts=0)


# --------------------------------------------------------------------------- good events


def test_good_events_validate_against_the_schema(records: list[ProducedRecord]) -> None:
    for _, record, event in good(records):
        errors = [e.message for e in VALIDATOR.iter_errors(event)]
        assert not errors, (record.kind, event, errors)
        assert RFC3339_MS_Z.match(event["occurred_at"]), event["occurred_at"]
        assert record.key == event["account_id"].encode("utf-8")
        assert record.value.decode("utf-8")  # UTF-8, non-ASCII included
        assert event["source"]


def test_event_ids_are_unique_except_for_exact_resends(records: list[ProducedRecord]) -> None:
    ids = Counter(event["event_id"] for _, r, event in good(records) if r.kind != "duplicate")
    assert ids.most_common(1)[0][1] == 1


def test_products_metrics_and_sources_match(records: list[ProducedRecord]) -> None:
    seen: set[tuple[str, str, str]] = set()
    for _, _, event in good(records):
        if event["event_type"] == "usage":
            seen.add((event["product"], event["metric"], event["source"]))
            if event["metric"] in ("billable_tickets", "sms_segments"):
                assert event["dedup_key"]
            if event["metric"] == "billable_tickets":
                assert event["quantity"] == 1
    expected = {(p, generator.METRIC_BY_PRODUCT[p], generator.SOURCE_BY_PRODUCT[p]) for p in generator.PRODUCTS}
    assert seen == expected


def test_quantities_are_exact_decimals_without_float_artifacts(records: list[ProducedRecord]) -> None:
    texts = [m.group(1).decode() for _, r, _ in good(records) for m in [QUANTITY_TEXT.search(r.value)] if m]
    assert texts
    for text in texts:
        assert re.fullmatch(r"\d+(\.\d{1,6})?", text), text  # unquoted, no exponent, <= 6 decimals
        assert not text.endswith("0") or "." not in text, text
    fractional = [t for t in texts if "." in t]
    assert fractional, "voice minutes should produce decimal quantities"
    # Parsing as Decimal gives back exactly the text: nothing went through a float.
    for _, r, _ in good(records):
        event = json.loads(r.value, parse_float=Decimal)
        if "quantity" in event:
            assert str(event["quantity"]) == QUANTITY_TEXT.search(r.value).group(1).decode()


def test_accounts_onboard_before_their_usage(records: list[ProducedRecord]) -> None:
    lifecycle: dict[str, dict[str, int]] = defaultdict(dict)
    plans = set()
    for i, _, event in good(records):
        account = event["account_id"]
        if event["event_type"] in ("account.created", "subscription.started"):
            lifecycle[account].setdefault(event["event_type"], i)
            plans.add(event.get("plan_id"))
        elif event["event_type"] == "usage":
            assert lifecycle[account].get("account.created", 10**9) < i
            assert lifecycle[account].get("subscription.started", 10**9) < i
    assert len(lifecycle) == 30
    assert plans - {None} <= set(PLANS)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_usage_event_time_is_after_the_subscription(seed: int) -> None:
    started: dict[str, int] = {}
    for _, r, e in good(list(generate(options(count=1500, accounts=40, seed=seed)))):
        if e["event_type"] == "subscription.started":
            started[e["account_id"]] = ms(e["occurred_at"])
        elif e["event_type"] == "usage":
            assert ms(e["occurred_at"]) > started[e["account_id"]], (r.kind, e)


def test_lifecycle_events_are_all_there(records: list[ProducedRecord]) -> None:
    types = Counter(event["event_type"] for _, r, event in good(records) if r.kind == "event")
    assert types["account.created"] == types["subscription.started"] == 30
    for event_type in ("plan.changed", "subscription.cancelled", "purchase.completed"):
        assert types[event_type] >= 1, event_type
    purchases = [e for _, _, e in good(records) if e["event_type"] == "purchase.completed"]
    assert all(re.fullmatch(r"\d+\.\d{2}", p["amount"]["value"]) and p["amount"]["currency"] == "USD" for p in purchases)


def test_a_few_big_merchants_make_most_of_the_usage(records: list[ProducedRecord]) -> None:
    per_account = Counter(e["account_id"] for _, r, e in good(records) if r.kind == "event" and e["event_type"] == "usage")
    top5 = sum(n for _, n in per_account.most_common(5))
    assert top5 > 0.5 * sum(per_account.values())


def test_usage_follows_merchant_daytime() -> None:
    rng = generator.Random(1)
    start = generator.to_ms(datetime(2026, 3, 2, tzinfo=UTC))
    account = generator.Account("acct_x", "x", "GB", 0, 1.0, "pro", ("helpdesk",))
    times = generator.sample_usage_times(rng, 20_000, [account], start, start + 7 * 24 * 3600 * 1000)
    hours = Counter((t // 3_600_000) % 24 for t in times)
    assert sum(hours[h] for h in range(10, 16)) > 5 * sum(hours[h] for h in range(1, 7))


# --------------------------------------------------------------------------- dedup material


def test_duplicates_are_exact_resends_of_earlier_records(records: list[ProducedRecord]) -> None:
    seen: set[tuple[bytes | None, bytes | None]] = set()
    gaps = []
    first_at: dict[tuple, int] = {}
    for i, r in enumerate(records):
        if r.kind == "duplicate":
            assert (r.key, r.value) in seen
            gaps.append(i - first_at[(r.key, r.value)])
        elif not r.kind.startswith("bad:"):
            seen.add((r.key, r.value))
            first_at.setdefault((r.key, r.value), i)
    assert min(gaps) >= 1
    assert max(gaps) > 1000, "some duplicates should come much later in the stream"


def _originals(records: list[ProducedRecord], metric: str) -> dict[tuple[str, str], dict]:
    found: dict[tuple[str, str], dict] = {}
    for _, r, e in good(records):
        if r.kind in ("event", "late") and e.get("metric") == metric:
            found.setdefault((e["account_id"], e["dedup_key"]), e)
    return found


def test_gateway_retries_share_the_dedup_key_inside_ten_minutes(records: list[ProducedRecord]) -> None:
    originals = _originals(records, "sms_segments")
    for _, r, e in good(records):
        if kind_family(r.kind) != "gateway_retry":
            continue
        original = originals[(e["account_id"], e["dedup_key"])]
        assert e["metric"] == "sms_segments" and e["event_id"] != original["event_id"]
        delta = ms(e["occurred_at"]) - ms(original["occurred_at"])
        if r.kind == "gateway_retry":
            assert 0 <= delta < TEN_MINUTES_MS
        else:
            assert delta >= TEN_MINUTES_MS


def test_reopened_tickets_share_the_dedup_key(records: list[ProducedRecord]) -> None:
    originals = _originals(records, "billable_tickets")
    for i, r, e in good(records):
        if kind_family(r.kind) != "reopened_ticket":
            continue
        original = originals[(e["account_id"], e["dedup_key"])]
        assert e["event_id"] != original["event_id"]
        orig_at, at = datetime.fromisoformat(original["occurred_at"]), datetime.fromisoformat(e["occurred_at"])
        assert at > orig_at
        months_apart = (at.year - orig_at.year) * 12 + at.month - orig_at.month
        assert months_apart == (1 if r.kind == "reopened_ticket:next_month" else 0)


def test_late_events_are_hours_behind_the_stream(records: list[ProducedRecord]) -> None:
    stream_max = 0
    lags = []
    for _, r, e in good(records):
        at = ms(e["occurred_at"])
        if r.kind == "late":
            lags.append(stream_max - at)
        elif r.kind == "event":
            stream_max = max(stream_max, at)
    assert lags and min(lags) >= 2 * 3600 * 1000 - 60_000
    assert max(lags) > 24 * 3600 * 1000, "some late events should be days behind"


def test_no_good_event_is_in_the_future(records: list[ProducedRecord]) -> None:
    limit = generator.to_ms(NOW) + 24 * 3600 * 1000
    assert all(ms(e["occurred_at"]) <= limit for _, _, e in good(records))


# --------------------------------------------------------------------------- bad records


def _bad_in_stated_way(reason: str, value: bytes | None) -> bool:
    """An independent check of each bad reason (not the generator's own code)."""
    if reason == "null_value":
        return value is None
    if value is None:
        return False
    if reason == "not_utf8":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False
    text = value.decode("utf-8")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return reason == "not_json"
    if reason == "not_object":
        return not isinstance(parsed, dict)
    if not isinstance(parsed, dict):
        return False
    usage = parsed.get("event_type") == "usage"
    required = REQUIRED_FIELDS + (USAGE_REQUIRED_FIELDS if usage else ())
    if reason == "missing_field":
        return any(name not in parsed for name in required)
    if reason == "null_field":
        return any(name in parsed and parsed[name] is None for name in required)
    errors = list(VALIDATOR.iter_errors(parsed))
    if reason == "wrong_type":
        return any(e.validator == "type" for e in errors)
    if reason == "unknown_event_type":
        return isinstance(parsed.get("event_type"), str) and parsed["event_type"] not in SCHEMA["properties"]["event_type"]["enum"]
    if reason == "unknown_schema_version":
        return parsed.get("schema_version") == 2
    if reason == "negative_quantity":
        return Decimal(str(parsed["quantity"])) < 0
    if reason == "future_occurred_at":
        return ms(parsed["occurred_at"]) > generator.to_ms(NOW) + 24 * 3600 * 1000
    raise AssertionError(reason)


def test_each_bad_record_is_bad_in_its_stated_way() -> None:
    recs = list(generate(options(count=4000, bad=0.2, seed=3)))
    bad = [r for r in recs if r.kind.startswith("bad:")]
    assert len(bad) == 800
    for r in bad:
        reason = r.kind.split(":", 1)[1]
        assert _bad_in_stated_way(reason, r.value), (r.kind, r.value)
        assert r.key is not None  # keyed by the producer before the payload went wrong


def test_bad_records_other_than_their_reason_are_otherwise_valid() -> None:
    # A schema_version 2 event or a negative quantity should not also be broken elsewhere,
    # so the quarantine reason is unambiguous.
    recs = list(generate(options(count=3000, bad=0.2, seed=4)))
    for r in recs:
        if r.kind in ("bad:unknown_schema_version", "bad:negative_quantity", "bad:unknown_event_type"):
            event = json.loads(r.value)
            failing = {e.path[0] if e.path else e.validator for e in VALIDATOR.iter_errors(event)}
            assert failing <= {"schema_version", "quantity", "event_type"}, (r.kind, failing)
        if r.kind == "bad:future_occurred_at":
            assert not list(VALIDATOR.iter_errors(json.loads(r.value)))


# --------------------------------------------------------------------------- record files


def test_json_line_is_sent_byte_for_byte_with_account_key() -> None:
    line = b'{ "event_id": "e1", "account_id": "acct_\xc3\xa9", "quantity": 1.50 }  '
    record = parse_record_line(line, 3)
    assert record is not None
    assert record.value == line and record.key == "acct_é".encode() and record.partition is None
    assert record.kind == record_files.KIND_FILE_JSON


def test_json_line_without_string_account_has_no_key() -> None:
    assert parse_record_line(b'{"event_id": "e1", "account_id": 12}', 1).key is None
    assert parse_record_line(b'{"event_id": "e1"}', 1).key is None


def test_raw_line_decodes_base64_and_honours_partition() -> None:
    value = b"\xff\xfe not utf-8"
    line = json.dumps({"key": "acct_1", "value_b64": base64.b64encode(value).decode(), "partition": 2}).encode()
    record = parse_record_line(line, 1)
    assert (record.key, record.value, record.partition, record.kind) == (b"acct_1", value, 2, "file:raw")
    tombstone = parse_record_line(b'{"key": "acct_1", "value_b64": null}', 1)
    assert tombstone.value is None and tombstone.key == b"acct_1"
    keyless = parse_record_line(b'{"key": null, "value_b64": "e30="}', 1)
    assert keyless.key is None and keyless.value == b"{}"


def test_blank_and_comment_lines_are_skipped() -> None:
    assert parse_record_line(b"", 1) is None
    assert parse_record_line(b"   \r", 1) is None
    assert parse_record_line(b"  # a comment", 1) is None


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b"not json at all", "not JSON"),
        (b'[{"event_id": "e1"}]', "not an object"),
        (b'"a string"', "not an object"),
        (b'{"account_id": "caf\xe9"}', "not UTF-8"),
        (b'{"key": "k", "value_b64": "***"}', "base64"),
        (b'{"key": null, "value_b64": null}', "both are null"),
        (b'{"key": 5, "value_b64": "e30="}', '"key"'),
        (b'{"key": "k", "value_b64": "e30=", "partition": -1}', '"partition"'),
    ],
)
def test_bad_lines_raise_with_the_line_number(line: bytes, fragment: str) -> None:
    with pytest.raises(RecordFileError, match=f"line 7: .*{re.escape(fragment)}"):
        parse_record_line(line, 7)


def test_read_records_file(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_bytes(
        b"# header comment\n"
        b'{"event_id":"e1","account_id":"a1"}\r\n'
        b"\n"
        b'{"key":"a2","value_b64":"bm90IGpzb24=","partition":0}\n'
        b"oops\n"
    )
    reader = read_records_file(path)
    first, second = next(reader), next(reader)
    assert (first.key, first.value, first.line_no) == (b"a1", b'{"event_id":"e1","account_id":"a1"}', 2)
    assert (second.key, second.value, second.partition, second.line_no) == (b"a2", b"not json", 0, 4)
    with pytest.raises(RecordFileError, match=r"records\.jsonl: line 5"):
        next(reader)


def test_dry_run_lines_round_trip_every_generated_record() -> None:
    recs = list(generate(options(count=2000, bad=0.1, seed=5)))
    json_lines = 0
    for r in recs:
        line = format_record_line(r)
        assert "\n" not in line
        parsed = parse_record_line(line.encode("utf-8"), 1)
        assert (parsed.key, parsed.value) == (r.key, r.value), r.kind
        json_lines += parsed.kind == record_files.KIND_FILE_JSON
    assert json_lines > 0.8 * len(recs)  # readable, not base64, wherever possible


# --------------------------------------------------------------------------- rate limiting, CLI glue


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_holds_the_rate_by_sleeping() -> None:
    clock = FakeClock()
    bucket = TokenBucket(50, clock=clock, sleep=clock.sleep)
    for _ in range(105):
        bucket.acquire()
    # 5 tokens of burst, then 100 at 50/s.
    assert clock.now == pytest.approx(2.0, rel=1e-6)
    assert all(s > 0 for s in clock.sleeps)
    assert len(clock.sleeps) == 100  # one sleep per wait, no spinning


def parse_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    produce.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_defaults() -> None:
    args = parse_args()
    assert (args.count, args.accounts, args.seed, args.rate, args.span_hours) == (10_000, 50, 42, None, 48.0)
    assert (args.duplicates, args.gateway_retries, args.reopened_tickets, args.late, args.bad) == (
        0.05, 0.03, 0.02, 0.02, 0.01,
    )
    assert args.topic is None and args.bootstrap_servers is None and not args.dry_run and args.from_file is None
    assert parse_args("--start", "2026-04-30T12:00:00Z").start == START
    with pytest.raises(SystemExit):
        parse_args("--bad", "2")


def test_run_dry_run_prints_records_and_summarises(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args("--count", "300", "--accounts", "5", "--dry-run", "--start", "2026-04-30T12:00:00Z")
    summary = produce.run(args, Settings())
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 300 == summary.records == sum(summary.kinds.values())
    assert summary.dry_run and summary.topic == Settings().events_topic
    assert "300 records" in err and "By kind:" in err


def test_run_dry_run_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"event_id":"e1","account_id":"a1"}\n# skip\n{"key":null,"value_b64":"AA=="}\n')
    summary = produce.run(parse_args("--from-file", str(path), "--dry-run", "--topic", "t1"), Settings())
    out, _ = capsys.readouterr()
    assert out.splitlines() == ['{"event_id":"e1","account_id":"a1"}', '{"key": null, "value_b64": "AA=="}']
    assert summary.kinds == {"file:json": 1, "file:raw": 1} and summary.topic == "t1"


def test_send_to_a_closed_port_names_the_bootstrap_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_clients, "BOOTSTRAP_TIMEOUT_MS", 500)
    monkeypatch.setattr(kafka_clients, "MAX_BLOCK_MS", 500)
    settings = Settings().with_overrides(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ProduceError, match=r"127\.0\.0\.1:1"):
        sender.send([ProducedRecord(b"k", b"{}", "event")], settings, topic="nowhere")
