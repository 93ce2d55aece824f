"""A seeded corpus of hostile Kafka records, for the parser's fuzz tests and the broker run.

Every record breaks the event contract in some way the schema allows (wrong types in every
field, out-of-range values, missing and null fields) or in ways it does not expect
(truncated or deeply nested JSON, NaN/Infinity, huge strings and numbers, invalid UTF-8,
lone surrogates, duplicated keys, empty and null keys and values, timestamps out of any
range). A share of well-formed events is mixed in, so the run also shows good records pass.

`python -m devtools.hostile --count 100000 --topic T` sends a corpus to a topic; the same
seed always gives the same records.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

EVENT_TYPES = ("usage", "account.created", "subscription.started", "plan.changed", "subscription.cancelled",
               "purchase.completed")
FIELDS = ("event_id", "event_type", "account_id", "occurred_at", "schema_version", "source", "product",
          "metric", "quantity", "dedup_key", "plan_id", "amount", "properties")
# JSON fragments of every type, spliced in verbatim as a field's value.
WRONG_VALUES = ('null', 'true', 'false', '0', '-1', '1.5', '1e3', '""', '" "', '[]', '[1,"a"]', '{}',
                '{"a":{"b":1}}', '"1"', '"null"', '"\\u0000"')
HUGE_NUMBERS = ('1e400', '-1e400', '1e-400', '123456789012345678901234567890123456789012345678901234567890',
                '0.0000000000000000000000000000000000001', '99999999999999999999999999999999.999999',
                '100000000000000000000000000000000', '1.0000001', '-0', '-0.0', '0e0', '1E+2',
                '18446744073709551616', '4.9e-324', '1.7976931348623157e308')
BAD_TIMESTAMPS = ("0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "+10000-01-01T00:00:00Z", "2024-02-30T10:00:00Z",
                  "2024-13-01T00:00:00Z", "2024-05-01T25:00:00Z", "2024-05-01T23:59:60Z", "2024-05-01T10:00:00+25:00",
                  "2024-05-01T10:00:00.1234567890Z", "2024-05-01 10:00:00Z", "2024-05-01T10:00:00", "20240501T100000Z",
                  "-2024-05-01T10:00:00Z", "1970-01-01T00:00:00Z", "2262-04-12T00:00:00Z",
                  "", " 2024-05-01T10:00:00Z", "2024-05-01T10:00:00Z\n", "2024-05-01T10:00:00.Z", "now")
INVALID_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82")
PII = ({"email": "jane.doe@shop.example"}, {"signup_ip": "203.0.113.7"}, {"phone": "+1 415 555 0100"},
       {"note": "call me at +44 20 7946 0958 or mail ops@acme.io"}, {"customer": {"ip": "198.51.100.4"}},
       # Phones and IPv6 inside free text, with nothing else personal beside them.
       {"comment": "ring (212) 555-0142 after six"}, {"log": "peer 2001:db8:85a3::8a2e:370:7334 dropped"},
       {"contact": "reach us on +49 30 901820 77"},
       # Card numbers (Luhn-valid), whole or in text, and an order id that is not one.
       {"card": "4539 1488 0343 6467", "order_id": "4539148803436468"},
       {"memo": "paid by 5425-2334-3010-9903 exp 04/28"},
       # Credentials under any spelling of a sensitive key, at any depth.
       {"password": "Tr0ub4dor&3", "apiKey": "sk_live_9f8e7d6c5b4a", "X-Auth-Token": "tok_1a2b3c4d5e"},
       {"headers": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.s3cr3t"}, "client_secret": "cs_77aa88bb99cc"},
       # A personal value where the notifications read a property (a purchase's sku).
       {"sku": "buyer.private@mail.example"})
# The personal values above as they would appear raw: none may reach a silver or gold
# table or a notification (tests/integration/test_pii_e2e.py, test_hostile_kafka.py).
RAW_PII = ("jane.doe@shop.example", "203.0.113.7", "+1 415 555 0100", "ops@acme.io", "198.51.100.4", "7946 0958",
           "555-0142", "2001:db8:85a3", "901820", "4539 1488 0343 6467", "4539148803436467",
           "5425-2334-3010-9903", "Tr0ub4dor", "sk_live_9f8e7d6c5b4a", "tok_1a2b3c4d5e", "s3cr3t", "cs_77aa88bb99cc",
           "buyer.private")


@dataclass(frozen=True)
class HostileRecord:
    key: bytes | None
    value: bytes | None
    category: str


class Corpus:
    def __init__(self, seed: int, now: datetime | None = None):
        self.rng = random.Random(seed)
        self.now = now or datetime.now(UTC)
        self.n = 0

    # -- building blocks ---------------------------------------------------------------
    def _ts(self) -> str:
        t = self.now - timedelta(seconds=self.rng.randrange(0, 30 * 86400))
        return t.strftime("%Y-%m-%dT%H:%M:%S") + self.rng.choice(("Z", ".5Z", "+02:00", ".123456789-05:30"))

    def good_event(self) -> dict:
        self.n += 1
        acct = f"acct_{self.rng.randrange(50):03d}"
        event_type = self.rng.choice(EVENT_TYPES + ("usage",) * 4)
        body: dict = {"event_id": f"h-{self.n:08d}-{self.rng.getrandbits(24):06x}", "event_type": event_type,
                      "account_id": acct, "occurred_at": self._ts(), "schema_version": 1, "source": "hostile"}
        if event_type == "usage":
            body.update(product=self.rng.choice(("helpdesk", "voice", "sms")), metric="billable_tickets",
                        quantity=self.rng.choice((0, 1, 2.5, 0.000001, 10**12)))
        elif event_type in ("subscription.started", "plan.changed"):
            body["plan_id"] = self.rng.choice(("starter", "pro"))
        elif event_type == "purchase.completed":
            body["amount"] = {"value": "12.34", "currency": "USD"}
        if self.rng.random() < 0.5:
            body["properties"] = dict(self.rng.choice(PII))
        return body

    @staticmethod
    def _encode(body: dict) -> bytes:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def _splice(self, body: dict, field: str, fragment: str) -> bytes:
        """body with field's value replaced by a raw JSON fragment (or added)."""
        parts = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in body.items() if k != field]
        parts.insert(self.rng.randrange(len(parts) + 1), f"{json.dumps(field)}:{fragment}")
        return ("{" + ",".join(parts) + "}").encode("utf-8")

    def _key(self, body: dict | None) -> bytes | None:
        r = self.rng.random()
        if r < 0.05:
            return None
        if r < 0.08:
            return b""
        if r < 0.10:
            return b"\xff\xfe"
        return (body or {}).get("account_id", "acct_x").encode() if isinstance((body or {}).get("account_id"), str) \
            else b"acct_x"

    # -- categories --------------------------------------------------------------------
    def record(self) -> HostileRecord:
        category = self.rng.choice(CATEGORIES)
        body = self.good_event()
        value = getattr(self, f"_{category}")(body)
        key = self._key(body)
        if key is None and value is None:
            # kafka-python refuses to send a record with neither (the protocol allows it);
            # an empty key keeps the null value in the corpus.
            key = b""
        return HostileRecord(key, value, category)

    def _good(self, body):
        return self._encode(body)

    def _truncated(self, body):
        raw = self._encode(body)
        return raw[: self.rng.randrange(0, len(raw))]

    def _deeply_nested(self, body):
        depth = self.rng.choice((100, 1000, 5000, 20000))
        where = self.rng.choice(("properties", "value", "quantity", "event_id"))
        nest = "[" * depth + "]" * depth if self.rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        if where == "value":
            return nest.encode()
        return self._splice(body, where, nest)

    def _huge_string(self, body):
        field = self.rng.choice(("event_id", "account_id", "source", "dedup_key", "properties", "metric", "occurred_at"))
        size = self.rng.choice((129, 65, 10_000, 200_000))
        text = json.dumps(self.rng.choice("ax\u00e9\u4e2d") * size, ensure_ascii=False)
        fragment = '{"blob":' + text + "}" if field == "properties" else text
        return self._splice(body, field, fragment)

    def _huge_number(self, body):
        field = self.rng.choice(("quantity", "quantity", "schema_version", "event_id", "occurred_at"))
        return self._splice(body, field, self.rng.choice(HUGE_NUMBERS))

    def _nan_infinity(self, body):
        field = self.rng.choice(("quantity", "schema_version", "properties"))
        token = self.rng.choice(("NaN", "Infinity", "-Infinity", "+Infinity", "nan", "inf"))
        return self._splice(body, field, '{"x":' + token + "}" if field == "properties" else token)

    def _wrong_type(self, body):
        return self._splice(body, self.rng.choice(FIELDS), self.rng.choice(WRONG_VALUES))

    def _missing_field(self, body):
        field = self.rng.choice(FIELDS[:9])
        body.pop(field, None)
        return self._encode(body)

    def _invalid_utf8(self, body):
        raw = self._encode(body)
        at = self.rng.randrange(len(raw))
        return raw[:at] + self.rng.choice(INVALID_UTF8) + raw[at:]

    def _lone_surrogate(self, body):
        field = self.rng.choice(("event_id", "account_id", "dedup_key", "source", "properties"))
        text = self.rng.choice(('"\\ud800"', '"a\\udfffb"', '"\\ud83d"', '"ok\\ud83d\\ude00"'))
        return self._splice(body, field, '{"s":' + text + "}" if field == "properties" else text)

    def _empty_or_null(self, body):
        return self.rng.choice((None, b"", b" ", b"null", b"{}", b'""', b"[]", b"0", b"\x00", b"\n",
                                self._splice(body, self.rng.choice(FIELDS), '""'),
                                self._splice(body, "", '"empty key"'),
                                self._splice(body, "properties", '{"":null,"k":null}')))

    def _bad_timestamp(self, body):
        body["occurred_at"] = self.rng.choice(BAD_TIMESTAMPS)
        return self._encode(body)

    def _future(self, body):
        body["occurred_at"] = (self.now + timedelta(days=self.rng.choice((2, 400, 3000)))).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._encode(body)

    def _duplicated_key(self, body):
        field = self.rng.choice(("event_id", "quantity", "account_id", "event_type"))
        raw = self._encode(body)
        return raw[:-1] + f',{json.dumps(field)}:{json.dumps("dup")}' .encode() + b"}"

    def _not_json_object(self, body):
        raw = self._encode(body)
        return self.rng.choice((b"\xef\xbb\xbf" + raw, raw + b" trailing", raw + raw, b"[" + raw + b"]",
                                json.dumps(json.dumps(body)).encode(), raw.replace(b'"', b"'"),
                                b"/*c*/" + raw, raw + b"\x00"))

    def _bad_values(self, body):
        field, value = self.rng.choice((
            ("event_type", "Usage"), ("event_type", "usage "), ("schema_version", 2), ("schema_version", 0),
            ("quantity", -1), ("quantity", -0.000001), ("quantity", 1.0000001), ("product", "phone"),
            ("amount", {"value": "1e3", "currency": "USD"}), ("amount", {"value": "12.34", "currency": "usd"}),
            ("amount", {"value": "12.3456789", "currency": "USD"}), ("amount", {"currency": "USD"}),
            ("event_id", ""), ("account_id", "x" * 65), ("event_id", "y" * 129), ("metric", ""),
            ("dedup_key", ""), ("plan_id", ""),
        ))
        if field in ("amount",):
            body["event_type"] = "purchase.completed"
        if field in ("quantity", "product", "metric", "dedup_key"):
            body.update(event_type="usage", product=body.get("product", "voice"), metric=body.get("metric", "m"),
                        quantity=body.get("quantity", 1))
        if field == "plan_id":
            body["event_type"] = "plan.changed"
        body[field] = value
        return self._encode(body)

    def _random_bytes(self, body):
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(1, 200)))

    def records(self, count: int):
        for _ in range(count):
            yield self.record()


CATEGORIES = ("good", "good", "good", "truncated", "deeply_nested", "huge_string", "huge_number", "nan_infinity",
              "wrong_type", "wrong_type", "missing_field", "invalid_utf8", "lone_surrogate", "empty_or_null",
              "bad_timestamp", "future", "duplicated_key", "not_json_object", "bad_values", "random_bytes")


def corpus(seed: int, count: int, now: datetime | None = None) -> list[HostileRecord]:
    return list(Corpus(seed, now).records(count))


def send(records, settings) -> int:
    """Send (key, value) records in order to settings.events_topic; returns the count."""
    from pipelines.core import kafka_clients

    producer = kafka_clients.new_producer(settings, **kafka_clients.producer_tuning(client_id="lakehouse-hostile"))
    sent = 0
    try:
        for record in records:
            producer.send(settings.events_topic, key=record.key, value=record.value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def main(argv: list[str] | None = None) -> int:
    from pipelines.core.settings import Settings

    p = argparse.ArgumentParser(prog="python -m devtools.hostile", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--topic", required=True)
    p.add_argument("--bootstrap-servers", default=None)
    args = p.parse_args(argv)
    settings = Settings().with_overrides(bootstrap_servers=args.bootstrap_servers, events_topic=args.topic)
    sent = send(Corpus(args.seed).records(args.count), settings)
    print(f"sent {sent:,} hostile records to {args.topic}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
