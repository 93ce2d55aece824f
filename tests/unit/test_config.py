"""Config files: dedup rules and pipeline settings, loaded and validated (no Spark)."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from pipelines.core.config import (
    DEFAULT_DEDUP_RULES,
    DEFAULT_PIPELINE,
    ConfigError,
    DedupRule,
    SilverConfig,
    load_dedup_rules,
    load_pipeline_config,
    parse_dedup_rules,
    parse_duration,
    parse_pipeline_config,
)

MONTHLY = {"name": "tickets", "metric": "billable_tickets", "kind": "once_per_calendar_period", "period": "month"}
RETRY = {"name": "sms", "metric": "sms_segments", "kind": "retry_window", "window": "10 minutes"}


def rules_doc(*rules) -> dict:
    return {"version": 1, "rules": list(rules)}


def raises(message: str):
    return pytest.raises(ConfigError, match=f"^{re.escape(message)}$")


# --- shipped files -------------------------------------------------------------------------

def test_default_dedup_rules_are_the_design_rules():
    assert load_dedup_rules() == (
        DedupRule("billable_tickets_monthly", "billable_tickets", "once_per_calendar_period", period="month"),
        DedupRule("sms_gateway_retry", "sms_segments", "retry_window", window=timedelta(minutes=10)),
    )
    assert load_dedup_rules(DEFAULT_DEDUP_RULES) == load_dedup_rules()


def test_default_pipeline_config():
    assert load_pipeline_config() == SilverConfig(
        watermark_delay=timedelta(hours=26), late_threshold=timedelta(hours=1),
        future_tolerance=timedelta(hours=24),
    )
    assert load_pipeline_config(str(DEFAULT_PIPELINE)) == load_pipeline_config()


def test_load_dedup_rules_from_a_given_path(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: r, metric: m, kind: retry_window, window: 2 hours}\n",
                    encoding="utf-8")
    assert load_dedup_rules(path) == (DedupRule("r", "m", "retry_window", window=timedelta(hours=2)),)
    assert load_dedup_rules(str(path)) == load_dedup_rules(path)


# --- file-level errors (shared by both loaders) ------------------------------------------------

@pytest.mark.parametrize("loader", [load_dedup_rules, load_pipeline_config], ids=["rules", "pipeline"])
def test_missing_file(tmp_path, loader):
    path = tmp_path / "nope.yaml"
    with raises(f"{path}: file not found"):
        loader(path)


@pytest.mark.parametrize("loader", [load_dedup_rules, load_pipeline_config], ids=["rules", "pipeline"])
def test_invalid_yaml(tmp_path, loader):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nrules: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not valid YAML: "):
        loader(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", ""], ids=["list", "scalar", "empty"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with raises(f"{path}: expected a mapping at the top level"):
        load_dedup_rules(path)


# Only the integer 1: YAML's true and 1.0 compare equal to 1 in Python but are not version 1.
@pytest.mark.parametrize("version, shown", [("2", "2"), ("'1'", "'1'"), (None, "None"), ("true", "True"),
                                            ("1.0", "1.0"), ("[1]", "[1]")])
@pytest.mark.parametrize("loader", [load_dedup_rules, load_pipeline_config], ids=["rules", "pipeline"])
def test_wrong_version(tmp_path, loader, version, shown):
    path = tmp_path / "v.yaml"
    head = f"version: {version}\n" if version is not None else ""
    path.write_text(head + "rules: []\nsilver: {}\n", encoding="utf-8")
    with raises(f"{path}: version: must be 1, got {shown}" if version is not None else f"{path}: 'version' is required"):
        loader(path)


# --- dedup rules ---------------------------------------------------------------------------------

def test_parse_both_kinds():
    assert parse_dedup_rules(rules_doc(MONTHLY, RETRY)) == (
        DedupRule("tickets", "billable_tickets", "once_per_calendar_period", period="month"),
        DedupRule("sms", "sms_segments", "retry_window", window=timedelta(minutes=10)),
    )


@pytest.mark.parametrize("period", ["day", "week", "month", "quarter", "year"])
def test_every_period_is_accepted(period):
    (rule,) = parse_dedup_rules(rules_doc({**MONTHLY, "period": period}))
    assert (rule.period, rule.window) == (period, None)


def test_no_rules_is_allowed():
    assert parse_dedup_rules(rules_doc()) == ()


@pytest.mark.parametrize("doc, message", [
    ({"version": 1}, "'rules' is required"),
    ({"version": 1, "rules": {"a": 1}}, "rules: expected a list, got {'a': 1}"),
    ({"version": 1, "rules": None}, "rules: expected a list, got None"),
], ids=["absent", "mapping", "null"])
def test_rules_must_be_a_list(doc, message):
    with raises(f"rules.yaml: {message}"):
        parse_dedup_rules(doc, "rules.yaml")


def test_rule_must_be_a_mapping():
    with raises("dedup rules: rules[1]: expected a mapping, got 'sms'"):
        parse_dedup_rules(rules_doc(MONTHLY, "sms"))


def test_unknown_keys():
    with raises("dedup rules: rules[0]: unknown keys ['priority', 'scope'] "
                "(allowed: ['kind', 'metric', 'name', 'period', 'window'])"):
        parse_dedup_rules(rules_doc({**MONTHLY, "scope": "account", "priority": 1}))


@pytest.mark.parametrize("key", ["name", "metric", "kind"])
@pytest.mark.parametrize("value", [None, "", "  ", 3], ids=["missing", "empty", "blank", "number"])
def test_required_strings(key, value):
    rule = {**MONTHLY}
    if value is None:
        del rule[key]
    else:
        rule[key] = value
    if value is None:
        message = f"rules[0]: '{key}' is required"
    elif key == "kind":
        message = f"rules[0].kind: must be one of ('once_per_calendar_period', 'retry_window'), got {value!r}"
    else:
        message = f"rules[0].{key}: expected a non-empty string, got {value!r}"
    with raises(f"dedup rules: {message}"):
        parse_dedup_rules(rules_doc(rule))


def test_unknown_kind():
    with raises("dedup rules: rules[0].kind: must be one of ('once_per_calendar_period', 'retry_window'), "
                "got 'sliding_window'"):
        parse_dedup_rules(rules_doc({**RETRY, "kind": "sliding_window"}))


@pytest.mark.parametrize("period, shown", [(None, "None"), ("fortnight", "'fortnight'"), ("Month", "'Month'")])
def test_missing_or_bad_period(period, shown):
    rule = {k: v for k, v in MONTHLY.items() if k != "period"}
    if period is not None:
        rule["period"] = period
    with raises("dedup rules: rules[0]: 'period' is required" if period is None else
                "dedup rules: rules[0].period: must be one of ('day', 'week', 'month', 'quarter', 'year'), "
                f"got {shown}"):
        parse_dedup_rules(rules_doc(rule))


def test_window_on_a_period_rule():
    with raises("dedup rules: rules[0].window: 'window' belongs to retry_window rules"):
        parse_dedup_rules(rules_doc({**MONTHLY, "window": "10 minutes"}))


def test_period_on_a_retry_rule():
    with raises("dedup rules: rules[0].period: 'period' belongs to once_per_calendar_period rules"):
        parse_dedup_rules(rules_doc({**RETRY, "period": "month"}))


@pytest.mark.parametrize("window", [None, "10 mins", "ten minutes", "10", 10, "1 week", "-5 minutes", "1.5 hours",
                                    "10 Minutes"])
def test_bad_window(window):
    rule = {**RETRY, "window": window} if window is not None else {k: v for k, v in RETRY.items() if k != "window"}
    with raises("dedup rules: rules[0]: 'window' is required" if window is None else
                f"dedup rules: rules[0].window: expected a positive duration like '10 minutes', got {window!r}"):
        parse_dedup_rules(rules_doc(rule))


def test_zero_window():
    with raises("dedup rules: rules[0].window: expected a positive duration like '10 minutes', got '0 minutes'"):
        parse_dedup_rules(rules_doc({**RETRY, "window": "0 minutes"}))


def test_repeated_metric():
    with raises("dedup rules: each rule needs its own metric; repeated: ['billable_tickets']"):
        parse_dedup_rules(rules_doc(MONTHLY, {**RETRY, "metric": "billable_tickets"}))


def test_repeated_name():
    with raises("dedup rules: each rule needs its own name; repeated: ['sms']"):
        parse_dedup_rules(rules_doc(RETRY, {**MONTHLY, "name": "sms"}))


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: a, metric: m, kind: retry_window, window: soon}\n",
                    encoding="utf-8")
    with raises(f"{path}: rules[0].window: expected a positive duration like '10 minutes', got 'soon'"):
        load_dedup_rules(path)


# --- durations ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1 second", timedelta(seconds=1)),
    ("45 seconds", timedelta(seconds=45)),
    ("10 minutes", timedelta(minutes=10)),
    ("1 minute", timedelta(minutes=1)),
    ("2 hours", timedelta(hours=2)),
    ("1 day", timedelta(days=1)),
    ("  3 days ", timedelta(days=3)),
    ("90seconds", timedelta(seconds=90)),
])
def test_parse_duration(text, expected):
    assert parse_duration(text, "x") == expected


# --- pipeline config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [{"version": 1}, {"version": 1, "silver": {}}], ids=["absent", "empty"])
def test_pipeline_defaults(doc):
    assert parse_pipeline_config(doc) == SilverConfig()
    assert SilverConfig() == SilverConfig(timedelta(hours=26), timedelta(hours=1), timedelta(hours=24))


def test_pipeline_overrides_only_what_is_given():
    config = parse_pipeline_config({"version": 1, "silver": {"late_threshold": "30 minutes",
                                                              "future_tolerance": "2 days"}})
    assert config == SilverConfig(watermark_delay=timedelta(hours=26), late_threshold=timedelta(minutes=30),
                                  future_tolerance=timedelta(days=2))


# Present but not a mapping is an error, even when empty or null (`silver:` with nothing under it).
@pytest.mark.parametrize("silver", [["watermark_delay"], [], None, "", 0, False, "watermark_delay: 1 minute"],
                         ids=["list", "empty-list", "null", "empty-string", "zero", "false", "string"])
def test_pipeline_silver_must_be_a_mapping(silver):
    with raises(f"p.yaml: silver: expected a mapping, got {silver!r}"):
        parse_pipeline_config({"version": 1, "silver": silver}, "p.yaml")


@pytest.mark.parametrize("text, shown", [("silver: []\n", "[]"), ("silver:\n", "None")], ids=["empty-list", "empty-body"])
def test_pipeline_file_with_a_non_mapping_silver(tmp_path, text, shown):
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\n" + text, encoding="utf-8")
    with raises(f"{path}: silver: expected a mapping, got {shown}"):
        load_pipeline_config(path)


def test_pipeline_unknown_keys():
    with raises("pipeline config: silver: unknown keys ['watermark'] "
                "(allowed: ['future_tolerance', 'late_threshold', 'watermark_delay'])"):
        parse_pipeline_config({"version": 1, "silver": {"watermark": "10 minutes"}})


@pytest.mark.parametrize("key", ["watermark_delay", "late_threshold", "future_tolerance"])
def test_pipeline_bad_duration(key):
    with raises(f"pipeline config: silver.{key}: expected a positive duration like '10 minutes', got '1h'"):
        parse_pipeline_config({"version": 1, "silver": {key: "1h"}})


def test_pipeline_zero_duration():
    with raises("pipeline config: silver.late_threshold: expected a positive duration like '10 minutes', got '0 hours'"):
        parse_pipeline_config({"version": 1, "silver": {"late_threshold": "0 hours"}})


def test_pipeline_file_overrides(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("version: 1\nsilver:\n  watermark_delay: 30 seconds\n", encoding="utf-8")
    assert load_pipeline_config(path) == SilverConfig(watermark_delay=timedelta(seconds=30))


# silver.duplicates records identity copies under rule 'identity' and silver's history reads
# filter rule != 'identity': a custom rule with that name would lose its drops from the history.
@pytest.mark.parametrize("rule", [RETRY, MONTHLY], ids=["retry", "period"])
def test_rule_name_identity_is_reserved(rule):
    with raises("dedup rules: rules[1].name: the name 'identity' is reserved for identity deduplication"):
        parse_dedup_rules(rules_doc({**MONTHLY, "name": "tickets", "metric": "other"}, {**rule, "name": "identity"}))


@pytest.mark.parametrize("name", ["Identity", "identity_retry"])
def test_names_like_identity_are_allowed(name):
    (rule,) = parse_dedup_rules(rules_doc({**RETRY, "name": name}))
    assert rule.name == name


def test_rule_named_identity_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\nrules:\n  - {name: identity, metric: m, kind: retry_window, window: 1 hour}\n",
                    encoding="utf-8")
    with raises(f"{path}: rules[0].name: the name 'identity' is reserved for identity deduplication"):
        load_dedup_rules(path)
