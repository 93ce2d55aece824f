"""Personal data in properties: keyed hashes (joinable) or dropped on the way to silver."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from pipelines.core import secret_scopes
from pipelines.core.config import ConfigError
from pipelines.core.kafka_auth import Secret
from pipelines.ingest.pii import (PiiConfigError, hmac_hex, key_relation, load_pii_config, luhn_valid, parse_pii_config,
                           with_protected_properties)
from pipelines.ingest.pii_key import KEY_FILE, PiiHmacKey, PiiKeyError, load_pii_key, parse_key_value
from pipelines.core.settings import REPO_ROOT, Settings

SECRET = "unit-test-secret-" + "s" * 40
KEY = parse_key_value(f"v1:{SECRET}", "test")


def h(value: str) -> str:
    return "hmac:v1:" + hmac.new(SECRET.encode(), value.encode(), hashlib.sha256).hexdigest()


def protect(spark, *props: str | None, config=None) -> list[dict | None]:
    df = spark.createDataFrame([(i, p) for i, p in enumerate(props)], "i int, properties string")
    out = df.transform(with_protected_properties(config or load_pii_config(), KEY)).orderBy("i").collect()
    return [json.loads(r.properties) if r.properties is not None else None for r in out]


def test_listed_keys_and_matching_values_are_hashed_or_dropped(spark):
    got = protect(
        spark,
        json.dumps({"email": " Ann@Shop.Example ", "signup_ip": "10.0.0.1", "card_number": "4111111111111111",
                    "plan": "pro", "seats": 5, "ratio": 1.5, "flag": True, "none": None,
                    "contact": "+33 6 12 34 56 78", "note": "write to bob@x.org", "v6": "2001:db8::1",
                    "nested": {"who": {"ip": "192.168.1.20"}}, "order_id": "ord_1234567890",
                    "card_fingerprint": "fp_ab12"}),
        "{}",
        None,
    )
    assert got[0] == {
        "plan": "pro", "seats": 5, "ratio": 1.5, "flag": True, "none": None, "order_id": "ord_1234567890",
        "card_fingerprint": "fp_ab12",
        "email_hash": h("ann@shop.example"), "email_domain_hash": h("shop.example"),
        "signup_ip_hash": h("10.0.0.1"),
        "contact_hash": h("+33612345678"),
        "note_hash": h('"write to bob@x.org"'),
        "v6_hash": h("2001:db8::1"),
        "nested_hash": h('{"who":{"ip":"192.168.1.20"}}'),
    }
    assert got[1:] == [{}, None]
    assert "Ann" not in json.dumps(got) and "4111" not in json.dumps(got)


def test_the_hash_is_hmac_sha256_with_the_key_version_in_front(spark):
    # RFC 4231 test case 2, and a key longer than SHA-256's block (hashed first by HMAC).
    jefe = PiiHmacKey(7, Secret("Jefe"), "rfc4231")
    assert jefe.hash("what do ya want for nothing?") == (
        "hmac:v7:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    long_key = PiiHmacKey(2, Secret("L" * 131), "long")
    values = ["what do ya want for nothing?", "", "Café Niña ☕", "x" * 500]
    for key in (jefe, long_key, KEY):
        df = (spark.createDataFrame([(v,) for v in values], "v string")
              .join(F.broadcast(key_relation(spark, key)), how="cross")
              .select("v", hmac_hex(F.col("v"), key).alias("h")))
        got = {r.v: r.h for r in df.collect()}
        assert got == {v: key.hash(v) for v in values}
    assert long_key.hash("a") == "hmac:v2:" + hmac.new(b"L" * 131, b"a", hashlib.sha256).hexdigest()


def test_card_numbers_are_dropped_only_when_they_pass_luhn(spark):
    (got,) = protect(spark, json.dumps({
        "pan": "4111111111111111", "amex": "3782 822463 10005", "grouped": "5555-5555-5555-4444",
        "memo": "paid with 4012 8888 8888 1881, exp 12/29", "order_id": "4111111111111112",
        "invoice": "INV 1234567890123456", "tracking": "94001118992233445566", "short": "411111111111"}))
    # Dropped: a card number whole or in text (a hash of a PAN is still card data).
    assert got == {"order_id": "4111111111111112", "invoice": "INV 1234567890123456",
                   "tracking": "94001118992233445566", "short": "411111111111"}


def test_luhn_is_computed_with_built_ins(spark):
    def luhn(s: str) -> bool:
        total = 0
        for i, c in enumerate(reversed(s)):
            d = int(c) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        return 13 <= len(s) <= 19 and total % 10 == 0

    samples = ["4111111111111111", "4111111111111112", "378282246310005", "6011111111111117", "5105105105105100",
               "4222222222222", "1234567812345670", "1234567812345678", "0000000000000", "79927398713",
               "12345678901234567890", "", "41111111111111a1"]
    df = spark.createDataFrame([(s,) for s in samples], "s string").select("s", luhn_valid(F.col("s")).alias("ok"))
    assert {r.s: bool(r.ok) for r in df.collect()} == {s: s.isdigit() and luhn(s) for s in samples}


def test_phones_and_ips_inside_free_text_are_found(spark):
    (got,) = protect(spark, json.dumps({
        "a": "call me on +44 20 7946 0958 tomorrow", "b": "office (415) 555-0100 ext 2", "c": "fax 415.555.0100",
        "d": "client at fe80::1ff:fe23:4567:890a said hi", "e": "full 2001:0db8:85a3:0000:0000:8a2e:0370:7334 here",
        "f": "loopback ::1 and", "g": "from 203.0.113.7, twice",
        "keep1": "use std::map here", "keep2": "build 2024-05-01T10:00:00Z", "keep3": "deadbeef:cafe",
        "keep4": "order ord-2024-0001 of 12:30", "keep5": "version 1.2.3"}))
    assert sorted(got) == ["a_hash", "b_hash", "c_hash", "d_hash", "e_hash", "f_hash", "g_hash",
                           "keep1", "keep2", "keep3", "keep4", "keep5"]
    assert got["a_hash"] == h('"call me on +44 20 7946 0958 tomorrow"')


def test_credentials_are_dropped_by_key_name_at_any_depth(spark):
    (got,) = protect(spark, json.dumps({
        "password": "hunter2", "API_KEY": "k1", "X-Api-Key": "k2", "apiKey": "k3", "accessToken": "t1",
        "refresh_token": "t2", "Authorization": "Bearer abc", "client_secret": "s1", "session_cookie": "c",
        "headers": {"Authorization": "Bearer xyz", "accept": "json"}, "tokens_used": 1200,
        "secret_santa": True, "token_count": 3, "plan": "pro"}))
    assert got == {"tokens_used": 1200, "secret_santa": True, "token_count": 3, "plan": "pro"}


PATHOLOGICAL = {
    "long word": "a" * 200_000,
    "dots then @": "a." * 100_000 + "@b",
    "digits": "1" * 200_000,
    "digit pairs": "1 " * 100_000,
    "dashed digits": "1-" * 100_000,
    "dotted digits": "1." * 100_000,
    "hex colons": "a:" * 100_000,
    "double colons": "::" * 100_000,
    "hex words": "abcd:" * 40_000,
    "plus digits": "+1 " * 66_000,
    "parens": "(415" * 50_000,
    "sensitive words": "token" * 40_000,
    "card groups": "4111 " * 40_000,
}


def test_every_pattern_is_linear_on_pathological_text(spark):
    """The in_text patterns run over every string; a backtracking one takes minutes on one
    200 KB value (the hostile bench hung on it). Each value here would hang a pattern with
    nested or overlapping unbounded quantifiers; all of them together must finish in
    seconds. The cancel bounds the wait, not speed."""
    timer = threading.Timer(180, spark.sparkContext.cancelAllJobs)
    values = list(PATHOLOGICAL.values())
    protect(spark, json.dumps({"warm": "up"}))
    timer.start()
    try:
        started = time.monotonic()
        got = protect(spark, *[json.dumps({"blob": v}) for v in values],
                      json.dumps({"blob": "x" * 200_000 + " bob@x.org"}))
        elapsed = time.monotonic() - started
    finally:
        timer.cancel()
    assert elapsed < 60, f"{elapsed:.1f} s for {len(values)} values of 200 KB"
    assert got[0] == {"blob": "a" * 200_000}
    assert list(got[-1]) == ["blob_hash"]


def test_equal_inputs_stay_joinable_across_records(spark):
    a, b, c = protect(spark, '{"email": "x@acme.io", "ip": "1.2.3.4"}', '{"Email": "Y@ACME.io", "ip": "1.2.3.4"}',
                      '{"email": "z@other.io"}')
    assert a["email_domain_hash"] == b["Email_domain_hash"] != c["email_domain_hash"]
    assert a["ip_hash"] == b["ip_hash"]
    assert a["email_hash"] != b["Email_hash"]


def test_another_key_version_gives_other_hashes(spark):
    other = parse_key_value(f"v2:{SECRET}-rotated", "test")
    df = spark.createDataFrame([(1, '{"ip": "1.2.3.4"}')], "i int, properties string")
    old = json.loads(df.transform(with_protected_properties(load_pii_config(), KEY)).first().properties)
    new = json.loads(df.transform(with_protected_properties(load_pii_config(), other)).first().properties)
    assert old["ip_hash"].startswith("hmac:v1:") and new["ip_hash"].startswith("hmac:v2:")
    assert old["ip_hash"][8:] != new["ip_hash"][8:]


def test_a_listed_key_with_a_non_string_value_is_hashed_whole(spark):
    (got,) = protect(spark, '{"phone": 33612345678, "email": {"a": "b"}}')
    assert got == {"phone_hash": h("33612345678"), "email_hash": h('{"a":"b"}')}


def test_generated_keys_never_collide(spark):
    # A producer-sent "email_hash" cannot pass for ours; "a" and "a_domain" both want a_domain_hash.
    (got,) = protect(spark, '{"email": "x@y.io", "email_hash": "forged", "a": "p@q.io", "a_domain": "10.1.1.1"}')
    assert got == {"email_hash": h("x@y.io"), "email_domain_hash": h("y.io"),
                   "a_hash": h("p@q.io"), "a_domain_hash": h("q.io")}


def test_as_a_dataframe_the_other_columns_are_untouched(spark):
    df = spark.createDataFrame([("e1", '{"ip": "8.8.8.8", "n": 1}'), ("e2", None)], "event_id string, properties string")
    expected = spark.createDataFrame([("e1", f'{{"n":1,"ip_hash":"{h("8.8.8.8")}"}}'), ("e2", None)],
                                     "event_id string, properties string")
    assert_df_equality(df.transform(with_protected_properties(load_pii_config(), KEY)), expected,
                       ignore_row_order=True, ignore_nullable=True)


KEY_DOC = {"env": "K", "scope_env": "S", "scope_key": "pii-hmac-key"}


@pytest.mark.parametrize("doc, message", [
    ([], "expected a mapping at the top level"),
    ({"version": 1, "salt_env": "X"}, "version: must be 2, got 1 .*salt_env is gone"),
    ({"key": KEY_DOC}, "'version' is required"),
    ({"version": 3, "key": KEY_DOC}, "version: must be 2, got 3$"),
    ({"version": True, "key": KEY_DOC}, "version: must be 2, got True$"),
    ({"version": 2}, "'key' is required"),
    ({"version": 2, "key": "LAKEHOUSE_PII_KEY"}, "key: expected a mapping, got 'LAKEHOUSE_PII_KEY'"),
    ({"version": 2, "key": {**KEY_DOC, "env": "lower"}}, r"key\.env: must name an environment variable"),
    ({"version": 2, "key": {"env": "K", "scope_env": "S"}}, "key: 'scope_key' is required"),
    ({"version": 2, "key": {**KEY_DOC, "scope_env": "K"}}, "key: env and scope_env must be two different variables"),
    ({"version": 2, "key": {**KEY_DOC, "scope_key": "a b"}}, r"key\.scope_key: must be a secret's key"),
    ({"version": 2, "key": {**KEY_DOC, "salt": "x"}}, r"key: unknown keys \['salt'\]"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": "email", "kind": "mail"}]},
     r"keys\[0\]\.kind: must be one of \('email', 'phone', 'ip', 'text'\), got 'mail'"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": "email"}]}, r"keys\[0\]: 'kind' is required"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": "x", "action": "hide"}]},
     r"keys\[0\]\.action: must be one of \('hash', 'drop'\), got 'hide'"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": "x", "action": "drop", "kind": "ip"}]},
     r"keys\[0\]\.kind: a dropped key has no kind"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": " ", "kind": "ip"}]}, r"keys\[0\]\.name: expected a non-empty"),
    ({"version": 2, "key": KEY_DOC, "keys": [{"name": "Ip", "kind": "ip"}, {"name": "ip", "kind": "ip"}]},
     "listed twice"),
    ({"version": 2, "key": KEY_DOC, "patterns": [{"kind": "ip", "regex": "("}]}, r"patterns\[0\]: regex does not"),
    ({"version": 2, "key": KEY_DOC, "patterns": [{"kind": "ssn", "regex": "x"}]}, r"patterns\[0\]\.kind: must be one of"),
    ({"version": 2, "key": KEY_DOC, "patterns": [{"kind": "ip"}]}, r"patterns\[0\]: 'regex' is required"),
    ({"version": 2, "key": KEY_DOC, "patterns": [{"kind": "ip", "regex": "it's"}]},
     r"patterns\[0\]\.regex: a regex must not contain quotes or escaped backslashes"),
    ({"version": 2, "key": KEY_DOC, "patterns": [{"kind": "ip", "regex": "x", "in_text": "yes"}]},
     r"patterns\[0\]\.in_text: expected true or false, got 'yes'"),
    ({"version": 2, "key": KEY_DOC, "sensitive_keys": ["Api-Key"]}, r"sensitive_keys\[0\]: a lower-case word"),
    ({"version": 2, "key": KEY_DOC, "sensitive_keys": ["token", "token"]},
     r"sensitive_keys: a word is listed twice in \['token', 'token'\]"),
    ({"version": 2, "key": KEY_DOC, "sensitive_keys": "token"}, "sensitive_keys: expected a list or null, got 'token'"),
    ({"version": 2, "key": KEY_DOC, "screen": "("}, "screen: regex does not compile"),
    ({"version": 2, "key": KEY_DOC, "screen": 5}, "screen: expected a regex or null, got 5"),
    ({"version": 2, "key": KEY_DOC, "extra": 1}, r"unknown keys \['extra'\]"),
])
def test_config_errors_name_the_file_and_entry(doc, message):
    with pytest.raises(PiiConfigError, match=message) as err:
        parse_pii_config(doc, "conf/pii.yaml")
    assert str(err.value).startswith("conf/pii.yaml: ")
    assert isinstance(err.value, ConfigError)


def test_a_pii_file_of_another_version_is_refused(tmp_path):
    path = tmp_path / "pii.yaml"
    text = (Path(REPO_ROOT) / "pipelines/conf/pii.yaml").read_text()
    path.write_text(text.replace("\nversion: 2\n", "\nversion: 1\n"))
    with pytest.raises(PiiConfigError, match=rf"^{re.escape(str(path))}: version: must be 2, got 1 \(version 1's "
                                             r"salt_env is gone"):
        load_pii_config(path)


def test_empty_pii_lists_are_none():
    config = parse_pii_config({"version": 2, "key": KEY_DOC, "keys": None, "patterns": None, "sensitive_keys": None,
                               "screen": None})
    assert (config.keys, config.patterns, config.sensitive_keys, config.screen) == ((), (), (), None)


# -- the key ----------------------------------------------------------------------------------
LOCAL = "local[2]"


def test_the_key_comes_from_the_environment_or_a_secret_scope(tmp_path):
    config = load_pii_config()
    settings = Settings(lake_root=tmp_path)
    key = load_pii_key(config, settings, "spark://10.1.2.3:7077", env={"LAKEHOUSE_PII_KEY": f"v4:{SECRET}"})
    assert (key.version, key.secret.reveal(), key.source) == (4, SECRET, "LAKEHOUSE_PII_KEY")
    calls = []

    def scope(s, k):
        calls.append((s, k))
        return f"v9:{SECRET}"

    env = {"LAKEHOUSE_PII_SECRET_SCOPE": "billing-lakehouse", "DATABRICKS_RUNTIME_VERSION": "18.0"}
    key = load_pii_key(config, settings, "", env=env, secrets=scope)
    assert key.version == 9 and calls == [("billing-lakehouse", "pii-hmac-key")]
    assert SECRET not in repr(key) and SECRET not in str(key)
    assert not (tmp_path / KEY_FILE).exists()


def test_a_notebooks_dbutils_serves_the_key_as_it_serves_kafka(tmp_path, monkeypatch):
    class FakeDbutils:
        class secrets:  # noqa: N801 - dbutils' own spelling
            @staticmethod
            def get(scope, key):
                return f"v3:{SECRET}"

    monkeypatch.setattr(secret_scopes, "_secret_reader", None)
    secret_scopes.use_dbutils(FakeDbutils)
    try:
        key = load_pii_key(load_pii_config(), Settings(lake_root=tmp_path), "yarn",
                           env={"LAKEHOUSE_PII_SECRET_SCOPE": "s"})
    finally:
        secret_scopes.use_dbutils(None)
    assert key.version == 3


@pytest.mark.parametrize("master, env, catalog, reason", [
    ("spark://10.0.0.5:7077", {}, None, "Spark master spark://10.0.0.5:7077"),
    ("yarn", {}, None, "Spark master yarn"),
    ("local[*]", {"DATABRICKS_RUNTIME_VERSION": "18.0"}, None, "a Databricks Runtime"),
    ("local[*]", {}, "main", "tables in Unity Catalog"),
])
def test_a_run_that_is_not_local_refuses_to_start_without_a_key(tmp_path, master, env, catalog, reason):
    with pytest.raises(PiiKeyError, match=f"refusing to start: this run \\({re.escape(reason)}.*LAKEHOUSE_PII_SECRET_SCOPE"):
        load_pii_key(load_pii_config(), Settings(lake_root=tmp_path, catalog=catalog), master, env=env)
    assert not (tmp_path / KEY_FILE).exists()


def test_silver_refuses_to_start_off_this_machine_without_a_key(spark, tmp_path, monkeypatch):
    from pipelines.core.context import JobContext
    from pipelines.ingest.silver import silver_input

    for name in ("LAKEHOUSE_PII_KEY", "LAKEHOUSE_PII_SECRET_SCOPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "18.0")
    bronze = spark.createDataFrame([], "key binary, value binary, topic string, partition int, offset bigint, "
                                       "kafka_timestamp timestamp, ingested_at timestamp")
    with pytest.raises(PiiKeyError, match="refusing to start"):
        silver_input(bronze, JobContext.from_settings(Settings(lake_root=tmp_path)))


@pytest.mark.parametrize("value, message", [
    (f"{SECRET}", "'v<version>:<secret>'"),
    (f"v0:{SECRET}", "'v<version>:<secret>'"),
    ("v1:short-secret", "needs at least 32"),
])
def test_a_malformed_key_is_named_without_printing_it(tmp_path, value, message):
    with pytest.raises(PiiKeyError, match=message) as err:
        load_pii_key(load_pii_config(), Settings(lake_root=tmp_path), LOCAL, env={"LAKEHOUSE_PII_KEY": value})
    assert "LAKEHOUSE_PII_KEY" in str(err.value)
    assert value.split(":")[-1] not in str(err.value)


@pytest.mark.parametrize("master", ["local[2]", "local", "spark://127.0.0.1:7077", "spark://localhost:7077"])
def test_a_local_run_generates_a_private_key_per_lake_once(tmp_path, master):
    config = load_pii_config()
    lake_a, lake_b = Settings(lake_root=tmp_path / "a"), Settings(lake_root=tmp_path / "b")
    first = load_pii_key(config, lake_a, master, env={})
    again = load_pii_key(config, lake_a, master, env={})
    other = load_pii_key(config, lake_b, master, env={})
    assert first.version == 1 and first.secret == again.secret != other.secret
    assert len(first.secret.reveal()) >= 32
    path = tmp_path / "a" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_key_file_others_can_read_is_refused(tmp_path):
    settings = Settings(lake_root=tmp_path)
    load_pii_key(load_pii_config(), settings, LOCAL, env={})
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(PiiKeyError, match="readable by others.*chmod 600"):
        load_pii_key(load_pii_config(), settings, LOCAL, env={})


def test_no_key_or_salt_is_committed():
    """The old fixed development salt is gone, and no module holds a key of its own."""
    for path in [*REPO_ROOT.glob("pipelines/**/*.py"), *REPO_ROOT.glob("pipelines/**/*.yaml"),
                 REPO_ROOT / "databricks.yml", *REPO_ROOT.glob("notebooks/*.ipynb"), *REPO_ROOT.glob("resources/*.yml")]:
        text = path.read_text(encoding="utf-8")
        assert "lakehouse-local-dev-salt" not in text, path
        assert not re.search(r"LAKEHOUSE_PII_KEY\s*[:=]\s*['\"]?v[0-9]+:", text), path


_LEAK_PROBE = r'''
import json, sys, urllib.request
from pyspark.sql import functions as F
from pipelines.core.session import build_spark
from pipelines.ingest.pii import load_pii_config, with_protected_properties
from pipelines.ingest.pii_key import parse_key_value
import logging
logging.basicConfig(level=logging.DEBUG)
spark = build_spark("pii-leak-probe", shuffle_partitions=1,
                    extra_conf={"spark.ui.enabled": "true", "spark.ui.port": "0", "spark.log.level": "DEBUG"})
spark.sparkContext.setLogLevel("DEBUG")
key = parse_key_value(sys.argv[1], "probe")
df = spark.createDataFrame([(1, '{"email": "a@b.io", "note": "call +1 415 555 0100"}')], "i int, properties string")
out = df.transform(with_protected_properties(load_pii_config(), key))
print("QE:", out._jdf.queryExecution().toString())
out.explain(mode="extended")
out.explain(mode="codegen")
print("ROWS:", out.collect())
base = spark.sparkContext.uiWebUrl + "/api/v1/applications/" + spark.sparkContext.applicationId
for path in ("/sql?details=true&planDescription=true", "/environment", "/jobs", "/stages?details=true"):
    print("UI", path, urllib.request.urlopen(base + path).read().decode())
spark.stop()
'''


def test_the_key_never_appears_in_a_plan_a_log_or_the_spark_ui(tmp_path):
    """A separate Spark process at DEBUG log level (Spark then logs plans and generated code),
    with the UI on: its whole output (Python and JVM logs, explain in every mode, the query
    execution, the UI's REST answers for SQL, environment, jobs and stages) must not hold
    the key, nor either padded state HMAC derives from it, in any spelling."""
    secret = "leak-probe-" + os.urandom(24).hex()
    key = parse_key_value(f"v5:{secret}", "probe")
    script = tmp_path / "probe.py"
    script.write_text(_LEAK_PROBE)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LAKEHOUSE_ROOT": str(tmp_path / "lake")}
    done = subprocess.run([sys.executable, str(script), f"v5:{secret}"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "hmac:v5:" in output and "_pii_ipad" in output and '"planDescription"' in output  # it saw what it checks
    ipad, opad = key.padded()
    needles = {"secret": secret, "secret hex": secret.encode().hex(), "ipad hex": ipad.hex(), "opad hex": opad.hex(),
               "ipad upper hex": ipad.hex().upper(), "opad upper hex": opad.hex().upper()}
    needles.update({f"{n} (first 16)": v[:16] for n, v in list(needles.items())})
    leaked = [name for name, needle in needles.items() if needle in output]
    assert not leaked, leaked


def test_the_screen_lets_through_only_what_holds_nothing_personal(spark):
    """Properties the screen calls clear skip the per-entry work and must come out exactly
    as the full transform would give them; everything a pattern matches is not clear."""
    config = load_pii_config()
    assert config.screen
    # Every pattern's own examples trip the screen (its soundness for the shipped patterns).
    for value in ["ann@shop.example", "10.0.0.1", "2001:db8::1", "fe80::1", "dead:beef:cafe:babe:face:fade:bead:deaf",
                  "::1", "abc::", "+33 6 12 34 56 78", "(415) 555-0100", "415.555.0100", "4111 1111 1111 1111",
                  "378282246310005"]:
        assert any(re.search(p.regex, value) for p in config.patterns), value
        assert re.search(config.screen, value), value
    texts = ['{"channel":"chat"}', '{"country":"US","direction":"outbound"}', '{"name":"Café Niña"}',
             '{"Email":"x"}', '{"nested":{"PHONE":"x"}}', '{"seats":5}', '{"note":"mail ann@x.org"}', "{}",
             '{"v6":"abc::"}', '{"a":[1,2]}', '{"apiKey":"x"}', '{"h":{"Authorization":"y"}}', None]
    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "i int, properties string").withColumn(
        "properties", F.to_json(F.parse_json("properties")))
    screened = df.transform(with_protected_properties(config, KEY)).orderBy("i").collect()
    full = df.transform(with_protected_properties(dataclasses.replace(config, screen=None), KEY)).orderBy("i").collect()
    assert screened == full
    assert "Email" not in json.loads(screened[3].properties)               # a listed key, any case
    assert json.loads(screened[6].properties) == {"note_hash": h('"mail ann@x.org"')}
    assert json.loads(screened[10].properties) == {} == json.loads(screened[11].properties)


def test_pii_yaml_documents_the_key_variables():
    text = (Path(REPO_ROOT) / "pipelines/conf/pii.yaml").read_text()
    config = load_pii_config()
    assert config.key.env in text and config.key.scope_env in text
