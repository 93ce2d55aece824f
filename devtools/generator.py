"""A synthetic but realistic billing event stream: the development generator.

`generate(options)` is pure: a deterministic (seeded) iterator of `ProducedRecord`s that
mixes good events with every messiness the pipeline must survive (DESIGN sections 3 and 4):
exact re-sends, SMS gateway retries, reopened tickets, late events and bad records. Each
record carries a `kind` tag so tests can compute the expected billing truth. The demo, the
tests and the benches use it; `python -m devtools produce` sends it (devtools/produce.py).

Kinds emitted by `generate` (`kind_family(kind)` strips the `:detail` suffix):

    event                           a new good event (lifecycle or usage)
    late                            a new good usage event, occurred_at hours/days behind the stream
    duplicate                       an exact re-send (same key and value bytes) of an earlier good record
    gateway_retry                   sms_segments, same account_id+dedup_key, new event_id, occurred_at
                                    within 10 minutes after the original: the dedup rule drops it
    gateway_retry:outside_window    same, but 10 minutes or more after the original: it is billed
    reopened_ticket                 billable_tickets, same dedup_key, later in the same UTC month:
                                    the dedup rule drops it
    reopened_ticket:next_month      same, in the following UTC month: it is billed again
    bad:<reason>                    quarantine material, reason one of BAD_REASONS
"""
from __future__ import annotations

import bisect
import gzip
import heapq
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from random import Random
from typing import Iterable, Iterator, NamedTuple

from pipelines.core.exact_json import decimal_text, dumps

# --------------------------------------------------------------------------- vocabulary

KIND_EVENT = "event"
KIND_LATE = "late"
KIND_DUPLICATE = "duplicate"
KIND_GATEWAY_RETRY = "gateway_retry"
KIND_GATEWAY_RETRY_OUTSIDE = "gateway_retry:outside_window"
KIND_REOPENED_TICKET = "reopened_ticket"
KIND_REOPENED_NEXT_MONTH = "reopened_ticket:next_month"

BAD_REASONS: tuple[str, ...] = (
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "null_field",
    "wrong_type",
    "unknown_event_type",
    "unknown_schema_version",
    "negative_quantity",
    "future_occurred_at",
    # A Kafka tombstone: no value bytes at all, which is also "not UTF-8 JSON".
    "null_value",
)

PLANS: tuple[str, ...] = ("starter", "basic", "pro", "advanced", "enterprise")
PRODUCTS: tuple[str, ...] = ("helpdesk", "automate", "voice", "sms", "convert")
METRIC_BY_PRODUCT = {
    "helpdesk": "billable_tickets",
    "automate": "automated_interactions",
    "voice": "voice_minutes",
    "sms": "sms_segments",
    "convert": "campaign_recipients",
}
SOURCE_BY_PRODUCT = {
    "helpdesk": "helpdesk-api",
    "automate": "automate-engine",
    "voice": "voice-gateway",
    "sms": "sms-gateway",
    "convert": "convert-campaigns",
}
ACCOUNTS_SOURCE = "accounts-service"
BILLING_SOURCE = "billing-service"
CHECKOUT_SOURCE = "checkout-service"

REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "event_type", "account_id", "occurred_at", "schema_version")
USAGE_REQUIRED_FIELDS: tuple[str, ...] = ("product", "metric", "quantity")

# The custom dedup windows of DESIGN section 4, mirrored here only to label records.
GATEWAY_RETRY_WINDOW_MS = 10 * 60 * 1000
# The quarantine threshold for occurred_at in the future (DESIGN section 3).
FUTURE_TOLERANCE_MS = 24 * 3600 * 1000


_MS_PER_HOUR = 3600 * 1000
_MS_PER_DAY = 24 * _MS_PER_HOUR
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SIX_DECIMALS = Decimal("0.000001")

# Relative activity by merchant-local hour: quiet nights, busy working day, an evening tail.
_DAYTIME_CURVE: tuple[float, ...] = (
    0.10, 0.07, 0.05, 0.05, 0.06, 0.10, 0.20, 0.40, 0.70, 0.90, 1.00, 1.00,
    0.95, 1.00, 1.00, 0.95, 0.90, 0.80, 0.65, 0.55, 0.45, 0.35, 0.25, 0.15,
)
# (country, UTC offset hours, weight): mostly North American merchants, some EU/APAC.
_LOCALES: tuple[tuple[str, int, float], ...] = (
    ("US", -5, 30), ("US", -6, 10), ("US", -8, 20), ("CA", -5, 5), ("BR", -3, 4),
    ("GB", 0, 8), ("FR", 1, 6), ("DE", 1, 6), ("ES", 1, 3), ("JP", 9, 3), ("AU", 10, 5),
)
# Non-ASCII on purpose: good events must survive the UTF-8 path end to end.
_NAME_FIRST = ("Nordlicht", "Café", "Blue", "Tienda", "Maison", "Urban", "Wild", "Little", "Peak",
               "Golden", "Zürich", "東京", "Atelier", "Coastal", "Señor")
_NAME_SECOND = ("Outdoor", "Lumière", "Threads", "Niña", "Goods", "Supply", "Botanics", "Pets",
                "雑貨", "Coffee", "Boutique", "Gear", "Home", "Beauty", "Kids")
_INDUSTRIES = ("apparel", "beauty", "home", "food", "electronics", "sports", "pets", "toys")
# Product mix inside one merchant's usage, normalised over the products it has.
_PRODUCT_WEIGHT = {"helpdesk": 0.45, "automate": 0.25, "sms": 0.17, "voice": 0.10, "convert": 0.03}
# P(product enabled) by plan rank (starter..enterprise); helpdesk is always on.
_PRODUCT_ADOPTION = {
    "automate": (0.10, 0.30, 0.60, 0.80, 1.00),
    "voice": (0.05, 0.15, 0.35, 0.60, 0.90),
    "sms": (0.20, 0.35, 0.50, 0.70, 0.90),
    "convert": (0.10, 0.20, 0.40, 0.60, 0.90),
}
_PURCHASES = (
    ("sms_credits_1000", "49.00"), ("voice_minutes_500", "25.00"), ("ai_agent_boost", "99.00"),
    ("onboarding_pack", "149.50"), ("extra_seats_5", "75.00"),
)
_TICKET_CHANNELS = ("email", "chat", "contact_form", "instagram", "facebook", "whatsapp", "phone")


# --------------------------------------------------------------------------- public types


class ProducedRecord(NamedTuple):
    key: bytes | None
    value: bytes | None
    kind: str


@dataclass(frozen=True)
class GeneratorOptions:
    count: int = 10_000
    accounts: int = 50
    seed: int = 42
    # None: `span` before `now`, so the stream ends at the generation clock.
    start: datetime | None = None
    span: timedelta = timedelta(hours=48)
    duplicates: float = 0.05
    gateway_retries: float = 0.03
    reopened_tickets: float = 0.02
    late: float = 0.02
    bad: float = 0.01
    # The generation clock: the reference for "more than 24 h in the future". None: wall clock.
    # Output is a pure function of the options once `start` and `now` are both given.
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.accounts < 1:
            raise ValueError(f"accounts must be >= 1, got {self.accounts}")
        if self.span <= timedelta(0):
            raise ValueError(f"span must be positive, got {self.span}")
        for name, share in self.shares().items():
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be a share between 0 and 1, got {share}")
        if sum(self.shares().values()) > 1.0:
            raise ValueError(f"the shares add up to more than 1: {self.shares()}")

    def shares(self) -> dict[str, float]:
        return {
            "duplicates": self.duplicates,
            "gateway_retries": self.gateway_retries,
            "reopened_tickets": self.reopened_tickets,
            "late": self.late,
            "bad": self.bad,
        }


def kind_family(kind: str) -> str:
    """`gateway_retry:outside_window` -> `gateway_retry`, `bad:not_json` -> `bad`."""
    return kind.split(":", 1)[0]


# --------------------------------------------------------------------------- encoding


def to_ms(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def from_ms(ms: int) -> datetime:
    # Integer arithmetic: fromtimestamp(ms / 1000) can round a millisecond away.
    return _EPOCH + timedelta(milliseconds=ms)


def format_ts(ms: int) -> str:
    """RFC 3339, UTC `Z`, millisecond precision: `2026-05-01T09:30:00.250Z`."""
    ts = from_ms(ms)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def encode_event(event: dict) -> bytes:
    return dumps(event).encode("utf-8")


def record_key(account_id: object) -> bytes | None:
    return account_id.encode("utf-8") if isinstance(account_id, str) else None


# --------------------------------------------------------------------------- time helpers


def month_start_ms(ms: int) -> int:
    ts = from_ms(ms)
    return to_ms(datetime(ts.year, ts.month, 1, tzinfo=UTC))


def next_month_start_ms(ms: int) -> int:
    ts = from_ms(ms)
    year, month = (ts.year + 1, 1) if ts.month == 12 else (ts.year, ts.month + 1)
    return to_ms(datetime(year, month, 1, tzinfo=UTC))


def daytime_weight(utc_ms: int, utc_offset_h: int) -> float:
    local_hour = (utc_ms // _MS_PER_HOUR + utc_offset_h) % 24
    return _DAYTIME_CURVE[local_hour]


def resolve_window(options: GeneratorOptions) -> tuple[int, int, int]:
    """(start_ms, end_ms, now_ms) of a generation run."""
    now = options.now or datetime.now(UTC)
    start = options.start or (now - options.span)
    start_ms = to_ms(start)
    return start_ms, start_ms + options.span // timedelta(milliseconds=1), to_ms(now)


# --------------------------------------------------------------------------- accounts


@dataclass
class Account:
    account_id: str
    name: str
    country: str
    utc_offset_h: int
    weight: float
    plan_id: str
    products: tuple[str, ...]
    created_ms: int = 0
    started_ms: int = 0
    cancelled_ms: int | None = None
    next_ticket: int = 0
    # Cumulative product weights for bisect, aligned with `products`.
    product_cum: tuple[float, ...] = field(default=(), repr=False)

    def active_at(self, ms: int) -> bool:
        return self.started_ms <= ms and (self.cancelled_ms is None or ms < self.cancelled_ms)


def _uuid(rng: Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _cumulative(weights: Iterable[float]) -> tuple[float, ...]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return tuple(out)


def _pick_weighted(rng: Random, items: list | tuple, cum: tuple[float, ...]):
    return items[bisect.bisect_right(cum, rng.random() * cum[-1])]


def _plan_for_rank(rank: int, n: int) -> str:
    """A few big merchants on big plans, a long tail of small ones."""
    quantile = rank / max(n, 1)
    if rank == 0 or quantile < 0.05:
        return "enterprise"
    if quantile < 0.15:
        return "advanced"
    if quantile < 0.35:
        return "pro"
    if quantile < 0.65:
        return "basic"
    return "starter"


def build_accounts(rng: Random, n: int, start_ms: int, end_ms: int) -> list[Account]:
    """Accounts sorted biggest first; ~80 % exist at the start, the rest onboard mid-stream."""
    locales_cum = _cumulative(w for _, _, w in _LOCALES)
    # Pareto sizes: activity is heavy-tailed; capped so one merchant cannot be the whole stream.
    weights = sorted((min(rng.paretovariate(1.2), 60.0) for _ in range(n)), reverse=True)
    span = end_ms - start_ms
    accounts: list[Account] = []
    for rank, weight in enumerate(weights):
        plan = _plan_for_rank(rank, n)
        plan_rank = PLANS.index(plan)
        # The biggest merchant uses everything, so every dedup scenario has material.
        products = ("helpdesk",) + tuple(
            p for p in PRODUCTS[1:] if rank == 0 or rng.random() < _PRODUCT_ADOPTION[p][plan_rank]
        )
        country, offset, _ = _pick_weighted(rng, _LOCALES, locales_cum)
        onboards_late = rank > 0 and rng.random() < 0.2
        created = (
            start_ms + int(span * rng.uniform(0.05, 0.7))
            if onboards_late
            # Subscribed (created + at most 2 min) before the first usage at start_ms.
            else start_ms - rng.randrange(3 * 60_000, 10 * 60_000)
        )
        accounts.append(
            Account(
                account_id=f"acct_{rng.getrandbits(48):012x}",
                name=f"{rng.choice(_NAME_FIRST)} {rng.choice(_NAME_SECOND)}",
                country=country,
                utc_offset_h=offset,
                weight=weight,
                plan_id=plan,
                products=products,
                created_ms=created,
                started_ms=created + rng.randrange(2_000, 120_000),
                next_ticket=rng.randrange(1_000, 90_000),
                product_cum=_cumulative(_PRODUCT_WEIGHT[p] for p in products),
            )
        )
    return accounts


# --------------------------------------------------------------------------- event builders


def _base_event(rng: Random, event_type: str, account_id: str, occurred_ms: int, source: str) -> dict:
    return {
        "event_id": _uuid(rng),
        "event_type": event_type,
        "account_id": account_id,
        "occurred_at": format_ts(occurred_ms),
        "schema_version": 1,
        "source": source,
    }


def account_created_event(rng: Random, acct: Account) -> dict:
    event = _base_event(rng, "account.created", acct.account_id, acct.created_ms, ACCOUNTS_SOURCE)
    event["properties"] = {"name": acct.name, "country": acct.country, "industry": rng.choice(_INDUSTRIES)}
    return event


def subscription_started_event(rng: Random, acct: Account) -> dict:
    event = _base_event(rng, "subscription.started", acct.account_id, acct.started_ms, BILLING_SOURCE)
    event["plan_id"] = acct.plan_id
    event["properties"] = {"billing_cycle": "annual" if rng.random() < 0.25 else "monthly"}
    return event


def plan_changed_event(rng: Random, acct: Account, occurred_ms: int, previous: str, new: str) -> dict:
    event = _base_event(rng, "plan.changed", acct.account_id, occurred_ms, BILLING_SOURCE)
    event["plan_id"] = new
    direction = "upgrade" if PLANS.index(new) > PLANS.index(previous) else "downgrade"
    event["properties"] = {"previous_plan_id": previous, "direction": direction, "initiated_by": "merchant"}
    return event


def subscription_cancelled_event(rng: Random, acct: Account, occurred_ms: int) -> dict:
    event = _base_event(rng, "subscription.cancelled", acct.account_id, occurred_ms, BILLING_SOURCE)
    event["properties"] = {"reason": rng.choice(("too_expensive", "switched_provider", "closed_store"))}
    return event


def purchase_completed_event(rng: Random, acct: Account, occurred_ms: int) -> dict:
    sku, price = rng.choice(_PURCHASES)
    event = _base_event(rng, "purchase.completed", acct.account_id, occurred_ms, CHECKOUT_SOURCE)
    event["amount"] = {"value": price, "currency": "USD"}
    event["properties"] = {"sku": sku, "order_id": f"ord_{rng.getrandbits(40):010x}"}
    return event


def usage_event(rng: Random, acct: Account, product: str, occurred_ms: int) -> dict:
    """One usage event with a product-shaped quantity and business key."""
    event = _base_event(rng, "usage", acct.account_id, occurred_ms, SOURCE_BY_PRODUCT[product])
    event["product"] = product
    event["metric"] = METRIC_BY_PRODUCT[product]
    if product == "helpdesk":
        acct.next_ticket += 1
        event["quantity"] = Decimal(1)
        event["dedup_key"] = f"tkt_{acct.next_ticket}"
        event["properties"] = {"channel": rng.choice(_TICKET_CHANNELS)}
    elif product == "automate":
        event["quantity"] = Decimal(1)
        event["properties"] = {"feature": rng.choice(("ai_agent", "flows", "order_management"))}
    elif product == "voice":
        # Billed per second, expressed in minutes: 195 s -> 3.25, 200 s -> 3.333333.
        seconds = max(3, min(3600, int(rng.lognormvariate(4.5, 0.9))))
        event["quantity"] = (Decimal(seconds) / Decimal(60)).quantize(_SIX_DECIMALS, rounding=ROUND_HALF_UP)
        event["dedup_key"] = f"CA{rng.getrandbits(128):032x}"
        event["properties"] = {"direction": rng.choice(("inbound", "inbound", "outbound")), "seconds": seconds}
    elif product == "sms":
        event["quantity"] = Decimal(rng.choices((1, 2, 3, 4), weights=(70, 20, 7, 3))[0])
        event["dedup_key"] = f"SM{rng.getrandbits(128):032x}"
        event["properties"] = {"direction": "outbound", "country": acct.country}
    else:  # convert: one event per campaign send, sized by the merchant's audience
        recipients = max(10, int(rng.lognormvariate(6.0, 1.0) * math.sqrt(acct.weight)))
        event["quantity"] = Decimal(recipients)
        event["properties"] = {"campaign_id": f"cmp_{rng.getrandbits(32):08x}",
                               "channel": rng.choice(("email", "sms", "onsite"))}
    return event


# --------------------------------------------------------------------------- bad records


def corrupt(rng: Random, event: dict, reason: str, future_ref_ms: int) -> bytes | None:
    """Turn a good event into the value bytes of a bad record of the given reason."""
    event = dict(event)
    if reason == "null_value":
        return None
    if reason == "not_utf8":
        # Latin-1 text (`ü` is 0xFC, never valid UTF-8) or a gzip body (0x8b is never a UTF-8 lead).
        event["properties"] = {"customer_name": "Zoë Müller", "note": "commande réglée"}
        if rng.random() < 0.5:
            return dumps(event).encode("latin-1")
        return gzip.compress(encode_event(event), mtime=0)
    if reason == "not_json":
        body = encode_event(event)
        variant = rng.randrange(4)
        if variant == 0:
            return body[: len(body) // 2]  # truncated write
        if variant == 1:
            return b"\x00\x00\x00\x00\x07" + body  # Confluent schema-registry framing
        if variant == 2:
            return repr({k: str(v) for k, v in event.items()}).encode("utf-8")  # Python repr, single quotes
        return f"{event['account_id']},{event['occurred_at']},usage".encode("utf-8")  # CSV line
    if reason == "not_object":
        variant = rng.randrange(4)
        if variant == 0:
            return ("[" + dumps(event) + "]").encode("utf-8")  # a batch wrapped in an array
        if variant == 1:
            return json.dumps(dumps(event)).encode("utf-8")  # double-encoded: a JSON string
        return rng.choice((b"null", b"42", b"true"))
    if reason in ("missing_field", "null_field"):
        candidates = REQUIRED_FIELDS + (USAGE_REQUIRED_FIELDS if event.get("event_type") == "usage" else ())
        name = rng.choice(candidates)
        if reason == "missing_field":
            del event[name]
        else:
            event[name] = None
        return encode_event(event)
    if reason == "wrong_type":
        name, value = rng.choice(
            (
                ("quantity", decimal_text(event.get("quantity", Decimal(1)))),  # quoted number
                ("schema_version", "1"),
                ("account_id", rng.randrange(10_000, 99_999)),
                ("occurred_at", rng.randrange(1_700_000_000_000, 1_800_000_000_000)),  # epoch millis
                ("event_id", rng.randrange(1, 1 << 31)),
                ("event_type", ["usage"]),
            )
        )
        event[name] = value
        return encode_event(event)
    if reason == "unknown_event_type":
        event["event_type"] = rng.choice(("usage.recorded", "refund.issued", "subscription.paused", "Usage"))
        return encode_event(event)
    if reason == "unknown_schema_version":
        event["schema_version"] = 2
        event["unit"] = "count"  # what a v2 producer might add
        return encode_event(event)
    if reason == "negative_quantity":
        # Credits posted as negative usage: plausible producer bug, never billable.
        event["quantity"] = -rng.choice((Decimal(1), Decimal("0.5"), Decimal("12.25")))
        return encode_event(event)
    if reason == "future_occurred_at":
        # At least 2 days ahead of the generation clock, so it is still > 24 h ahead of the
        # ingestion time even after a long rate-limited run; clock bugs, not clock skew.
        ahead = rng.randrange(2 * _MS_PER_DAY, 400 * _MS_PER_DAY)
        event["occurred_at"] = format_ts(future_ref_ms + ahead)
        return encode_event(event)
    raise ValueError(f"unknown bad-record reason {reason!r}")


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class _Scheduled:
    """A lifecycle event due at `at_ms` (primary events are merged in time order)."""

    at_ms: int
    seq: int
    action: str
    account: int
    detail: tuple = ()


def schedule_lifecycle(rng: Random, accounts: list[Account], start_ms: int, end_ms: int) -> list[_Scheduled]:
    """Onboarding for everyone, plus a few plan changes, cancellations and purchases."""
    items: list[tuple[int, str, int, tuple]] = []
    for i, acct in enumerate(accounts):
        items.append((acct.created_ms, "account.created", i, ()))
        items.append((acct.started_ms, "subscription.started", i, ()))
    n = len(accounts)
    pool = list(range(n))
    rng.shuffle(pool)
    n_changes = max(1, round(n * 0.12))
    # Never cancel the biggest merchant: something must stay active to the end.
    n_cancels = round(n * 0.04) if n >= 4 else 0
    changers = pool[:n_changes]
    cancellers = [i for i in pool[n_changes:] if i != 0][:n_cancels]
    buyers = rng.sample(range(n), max(1, round(n * 0.2)))

    def after(acct: Account, lo_offset_ms: int, lo_floor_ms: int = 0) -> int:
        lo = max(acct.started_ms + lo_offset_ms, lo_floor_ms)
        return rng.randrange(lo, max(lo + 1, end_ms))

    for i in changers:
        acct = accounts[i]
        rank = PLANS.index(acct.plan_id)
        step = 1 if (rank == 0 or (rank < len(PLANS) - 1 and rng.random() < 0.7)) else -1
        items.append((after(acct, _MS_PER_HOUR), "plan.changed", i, (acct.plan_id, PLANS[rank + step])))
    for i in cancellers:
        acct = accounts[i]
        cancel_at = after(acct, _MS_PER_HOUR, start_ms + (end_ms - start_ms) // 2)
        acct.cancelled_ms = cancel_at
        items.append((cancel_at, "subscription.cancelled", i, ()))
    for i in buyers:
        items.append((after(accounts[i], 10 * 60_000), "purchase.completed", i, ()))
    items.sort(key=lambda it: it[0])
    return [_Scheduled(at, seq, action, i, detail) for seq, (at, action, i, detail) in enumerate(items)]


def sample_usage_times(rng: Random, n: int, accounts: list[Account], start_ms: int, end_ms: int) -> list[int]:
    """n event times with daily seasonality: thinning against merchant-local daytime activity."""
    intensity = [
        sum(a.weight * _DAYTIME_CURVE[(hour + a.utc_offset_h) % 24] for a in accounts) for hour in range(24)
    ]
    peak = max(intensity)
    span = end_ms - start_ms
    times: list[int] = []
    while len(times) < n:
        t = start_ms + int(rng.random() * span)
        if rng.random() * peak < intensity[(t // _MS_PER_HOUR) % 24]:
            times.append(t)
    times.sort()
    return times


def _special_slots(rng: Random, options: GeneratorOptions, warmup: int) -> dict[int, str]:
    """Position -> special kind, with exact counts per share; bad reasons cycle so all appear."""
    n = options.count
    counts = {
        KIND_DUPLICATE: round(n * options.duplicates),
        KIND_GATEWAY_RETRY: round(n * options.gateway_retries),
        KIND_REOPENED_TICKET: round(n * options.reopened_tickets),
        KIND_LATE: round(n * options.late),
    }
    kinds = [kind for kind, c in counts.items() for _ in range(c)]
    reasons = list(BAD_REASONS)
    rng.shuffle(reasons)
    kinds += [f"bad:{reasons[i % len(reasons)]}" for i in range(round(n * options.bad))]
    kinds = kinds[:n]
    rng.shuffle(kinds)
    # Specials come after the opening onboarding burst: there must be something to re-send.
    first = min(warmup, n - len(kinds))
    positions = sorted(rng.sample(range(first, n), len(kinds)))
    return dict(zip(positions, kinds))


@dataclass(frozen=True)
class _Original:
    account: int
    event: dict
    occurred_ms: int


class _Stream:
    """The walk over the stream: primaries in time order, specials at their slots.

    Mutable state lives here and nowhere else; everything it calls is a plain function of
    (rng, inputs).
    """

    DUPLICATE_RECENT = 20
    RETRY_RECENT = 50

    def __init__(self, options: GeneratorOptions) -> None:
        self.options = options
        self.rng = Random(options.seed)
        self.start_ms, self.end_ms, self.now_ms = resolve_window(options)
        self.accounts = build_accounts(self.rng, options.accounts, self.start_ms, self.end_ms)
        self.schedule = schedule_lifecycle(self.rng, self.accounts, self.start_ms, self.end_ms)
        onboarding = sum(1 for s in self.schedule if s.at_ms <= self.start_ms)
        self.slots = _special_slots(self.rng, options, warmup=onboarding)
        n_primary = options.count - len(self.slots)
        n_usage = max(0, n_primary - len(self.schedule))
        self.usage_times = sample_usage_times(self.rng, n_usage, self.accounts, self.start_ms, self.end_ms)
        self.n_primary = n_primary
        self.clock_ms = self.start_ms
        self.active: set[int] = set()
        self.active_version = 0
        self._choice_cache: dict[tuple[int, int], tuple[list[int], tuple[float, ...]]] = {}
        self.history: list[tuple[bytes | None, bytes]] = []
        self.sms_originals: list[_Original] = []
        self.ticket_originals: list[_Original] = []
        self.retried: set[int] = set()
        self.reopened: set[int] = set()

    # ---- choosing accounts

    def _choose_active(self, at_ms: int) -> int:
        """A merchant active at at_ms, weighted by size and its local time of day."""
        hour = at_ms // _MS_PER_HOUR
        key = (self.active_version, hour % 24)
        cached = self._choice_cache.get(key)
        if cached is None:
            idx = sorted(self.active)
            cum = _cumulative(self.accounts[i].weight * daytime_weight(at_ms, self.accounts[i].utc_offset_h) for i in idx)
            cached = self._choice_cache[key] = (idx, cum)
        idx, cum = cached
        # Empty only in degenerate runs (count smaller than the onboarding): the biggest
        # merchant subscribes before the start and is never cancelled.
        return _pick_weighted(self.rng, idx, cum) if idx else 0

    def _choose_historic(self, at_ms: int) -> int | None:
        idx = [i for i, a in enumerate(self.accounts) if a.active_at(at_ms)]
        if not idx:
            return None
        cum = _cumulative(self.accounts[i].weight * daytime_weight(at_ms, self.accounts[i].utc_offset_h) for i in idx)
        return _pick_weighted(self.rng, idx, cum)

    def _fresh_usage(self, account: int, at_ms: int) -> dict:
        acct = self.accounts[account]
        product = _pick_weighted(self.rng, acct.products, acct.product_cum)
        return usage_event(self.rng, acct, product, at_ms)

    # ---- emitting

    def _emit_good(self, event: dict, kind: str, account: int | None = None) -> ProducedRecord:
        key, value = record_key(event["account_id"]), encode_event(event)
        self.history.append((key, value))
        if account is not None and event["event_type"] == "usage" and kind in (KIND_EVENT, KIND_LATE):
            original = _Original(account, event, _parse_ms(event["occurred_at"]))
            if event["metric"] == "sms_segments":
                self.sms_originals.append(original)
            elif event["metric"] == "billable_tickets":
                self.ticket_originals.append(original)
        return ProducedRecord(key, value, kind)

    def _primary(self, item: _Scheduled | int) -> ProducedRecord:
        rng = self.rng
        if isinstance(item, int):  # a usage time
            self.clock_ms = item
            account = self._choose_active(item)
            # Producers batch and clocks differ a little: event time trails emission by a few seconds.
            occurred = max(self.accounts[account].started_ms + 1, item - int(rng.expovariate(1 / 1500)))
            return self._emit_good(self._fresh_usage(account, occurred), KIND_EVENT, account)
        self.clock_ms = max(self.clock_ms, item.at_ms)
        acct = self.accounts[item.account]
        if item.action == "account.created":
            event = account_created_event(rng, acct)
        elif item.action == "subscription.started":
            event = subscription_started_event(rng, acct)
            self._set_active(item.account, True)
        elif item.action == "plan.changed":
            event = plan_changed_event(rng, acct, item.at_ms, *item.detail)
        elif item.action == "subscription.cancelled":
            event = subscription_cancelled_event(rng, acct, item.at_ms)
            self._set_active(item.account, False)
        else:
            event = purchase_completed_event(rng, acct, item.at_ms)
        return self._emit_good(event, KIND_EVENT, item.account)

    def _set_active(self, account: int, active: bool) -> None:
        (self.active.add if active else self.active.discard)(account)
        self.active_version += 1

    def _special(self, kind: str) -> ProducedRecord | None:
        """The record for a special slot, or None when the stream has no material for it yet."""
        if kind == KIND_DUPLICATE:
            return self._duplicate()
        if kind == KIND_GATEWAY_RETRY:
            return self._gateway_retry()
        if kind == KIND_REOPENED_TICKET:
            return self._reopened_ticket()
        if kind == KIND_LATE:
            return self._late()
        return self._bad(kind.split(":", 1)[1])

    def _duplicate(self) -> ProducedRecord | None:
        if not self.history:
            return None
        rng = self.rng
        # Mostly a producer retry right after the original; sometimes a replay much later.
        if rng.random() < 0.7:
            key, value = self.history[-rng.randint(1, min(self.DUPLICATE_RECENT, len(self.history)))]
        else:
            key, value = rng.choice(self.history)
        return ProducedRecord(key, value, KIND_DUPLICATE)

    def _gateway_retry(self) -> ProducedRecord | None:
        recent = [
            pos for pos in range(max(0, len(self.sms_originals) - self.RETRY_RECENT), len(self.sms_originals))
            if pos not in self.retried
        ]
        if not recent:
            return None
        rng = self.rng
        pos = rng.choice(recent)
        self.retried.add(pos)
        original = self.sms_originals[pos]
        inside = rng.random() < 0.8
        delta = (
            rng.randrange(500, GATEWAY_RETRY_WINDOW_MS)
            if inside
            else rng.randrange(GATEWAY_RETRY_WINDOW_MS, 2 * _MS_PER_HOUR)
        )
        event = dict(original.event)
        event["event_id"] = _uuid(rng)
        event["occurred_at"] = format_ts(original.occurred_ms + delta)
        event["properties"] = {**original.event.get("properties", {}), "attempt": 2}
        return self._emit_good(event, KIND_GATEWAY_RETRY if inside else KIND_GATEWAY_RETRY_OUTSIDE)

    def _reopened_ticket(self) -> ProducedRecord | None:
        rng = self.rng
        want_next_month = rng.random() < 0.25
        for next_month in (want_next_month, not want_next_month):
            for _ in range(20):
                if not self.ticket_originals:
                    return None
                pos = rng.randrange(len(self.ticket_originals))
                if pos in self.reopened:
                    continue
                original = self.ticket_originals[pos]
                occurred = self._reopen_time(original.occurred_ms, next_month)
                if occurred is None:
                    continue
                self.reopened.add(pos)
                event = dict(original.event)
                event["event_id"] = _uuid(rng)
                event["occurred_at"] = format_ts(occurred)
                event["properties"] = {**original.event.get("properties", {}), "reopened": True}
                return self._emit_good(event, KIND_REOPENED_NEXT_MONTH if next_month else KIND_REOPENED_TICKET)
        return None

    def _reopen_time(self, original_ms: int, next_month: bool) -> int | None:
        """A reopen time not after the stream clock (a reopen cannot come from the future)."""
        if next_month:
            lo = next_month_start_ms(original_ms)
            hi = min(self.clock_ms, next_month_start_ms(lo) - 1)
        else:
            lo = original_ms + 60_000
            hi = min(self.clock_ms, next_month_start_ms(original_ms) - 1)
        return self.rng.randint(lo, hi) if lo <= hi else None

    def _late(self) -> ProducedRecord | None:
        rng = self.rng
        earliest = min(a.started_ms for a in self.accounts)
        max_lag = self.clock_ms - earliest - 60_000
        min_lag = 2 * _MS_PER_HOUR
        if max_lag < min_lag:
            return None
        # Hours behind (a stuck consumer, an offline device) or days behind (a backfilled outage).
        lag = rng.randrange(min_lag, 12 * _MS_PER_HOUR) if rng.random() < 0.65 else rng.randrange(_MS_PER_DAY, 5 * _MS_PER_DAY)
        if lag > max_lag:
            lag = rng.randint(min_lag, max_lag)
        at = self.clock_ms - lag
        account = self._choose_historic(at)
        if account is None:
            return None
        return self._emit_good(self._fresh_usage(account, at), KIND_LATE, account)

    def _bad(self, reason: str) -> ProducedRecord:
        account = self._choose_active(self.clock_ms)
        event = self._fresh_usage(account, self.clock_ms)
        value = corrupt(self.rng, event, reason, max(self.clock_ms, self.now_ms))
        # The producer keyed the record before its payload went wrong.
        return ProducedRecord(record_key(self.accounts[account].account_id), value, f"bad:{reason}")

    def records(self) -> Iterator[ProducedRecord]:
        primaries = heapq.merge(
            ((s.at_ms, 0, s.seq, s) for s in self.schedule),
            ((t, 1, i, t) for i, t in enumerate(self.usage_times)),
        )
        primaries = (item for *_, item in primaries)
        for position in range(self.options.count):
            kind = self.slots.get(position)
            record = self._special(kind) if kind else None
            if record is None:
                item = next(primaries, None)
                if item is None:  # material ran out (specials fell back): more ordinary usage
                    item = self.clock_ms + self.rng.randrange(10, 5_000)
                record = self._primary(item)
            yield record


def _parse_ms(occurred_at: str) -> int:
    return to_ms(datetime.fromisoformat(occurred_at))


def generate(options: GeneratorOptions) -> Iterator[ProducedRecord]:
    """Exactly `options.count` records, deterministic for (seed, start, now, shares...)."""
    return _Stream(options).records()
