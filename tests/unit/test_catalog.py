"""The pricing catalog: the shipped file, one test per validation error (its schema's and the
loader's), the Spark frames."""
from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

import pytest
from pyspark.sql import types as T

from pipelines.billing.catalog import (
    DEFAULT_CATALOG,
    MAX_MINOR_UNITS,
    MAX_SCALE,
    MODELS,
    MONEY_LIMIT,
    QUANTITY_LIMIT,
    Catalog,
    CatalogError,
    Charge,
    MetricPrice,
    Plan,
    Tier,
    load_catalog,
    parse_catalog,
    plans_frame,
    prices_frame,
)
from pipelines.core.config import ConfigError, config_schema

D = Decimal
WHERE = "p.yaml"
AT = f"{WHERE}: plans[0]"
TICKETS = f"{AT}.metrics.billable_tickets"
CHARGE = f"{TICKETS}.charge"

METRIC_PRODUCTS = {
    "billable_tickets": "helpdesk",
    "automated_interactions": "automate",
    "voice_minutes": "voice",
    "sms_segments": "sms",
    "campaign_recipients": "convert",
}


def raises(message: str):
    return pytest.raises(CatalogError, match=f"^{re.escape(message)}$")


def plan(plan_id: str = "basic", rank: int = 1, **changes) -> dict:
    raw = {
        "id": plan_id,
        "rank": rank,
        "currency": "USD",
        "base_fee": "60.00",
        "metrics": {
            "billable_tickets": {"product": "helpdesk", "included": "300",
                                 "charge": {"model": "per_unit", "unit_amount": "0.40"}},
        },
    }
    raw.update(changes)
    return raw


def catalog_doc(*plans, **changes) -> dict:
    doc = {"version": 1, "effective_from": "2025-01-01", "currencies": {"USD": 2, "JPY": 0},
           "plans": list(plans) or [plan(), plan("pro", 2)]}
    doc.update(changes)
    return doc


def with_metric(**changes) -> dict:
    """The catalog with the first plan's billable_tickets entry changed (a None value deletes the key)."""
    doc = catalog_doc()
    entry = doc["plans"][0]["metrics"]["billable_tickets"]
    for key, value in changes.items():
        if value is None:
            del entry[key]
        else:
            entry[key] = value
    return doc


def with_charge(charge: dict) -> dict:
    return with_metric(charge=charge)


def graduated(*tiers: dict) -> dict:
    return {"model": "graduated", "tiers": list(tiers)}


def parse(doc: dict) -> Catalog:
    return parse_catalog(doc, WHERE)


# --- the shipped catalog ------------------------------------------------------------------------

def test_default_catalog_loads():
    catalog = load_catalog()
    assert catalog == load_catalog(DEFAULT_CATALOG) == load_catalog(str(DEFAULT_CATALOG))
    assert type(catalog.version) is int
    assert isinstance(catalog.effective_from, date)
    assert [(p.id, p.rank, p.currency) for p in catalog.plans] == [
        ("starter", 1, "USD"), ("basic", 2, "USD"), ("pro", 3, "USD"), ("advanced", 4, "USD"),
        ("enterprise", 5, "USD"),
    ]
    assert catalog.minor_units("USD") == 2
    for p in catalog.plans:
        assert {m: price.product for m, price in p.metrics.items()} == METRIC_PRODUCTS
    assert {price.charge.model for p in catalog.plans for price in p.metrics.values()} == {
        "per_unit", "graduated", "volume", "package"}
    # a higher plan costs more up front and includes at least as much
    for lower, higher in zip(catalog.plans, catalog.plans[1:]):
        assert lower.base_fee < higher.base_fee
        for metric in METRIC_PRODUCTS:
            assert lower.metrics[metric].included <= higher.metrics[metric].included


def test_parse_builds_the_dataclasses():
    doc = catalog_doc(plan("pro", 2, currency="JPY", base_fee="5000"), plan(metrics={
        "voice_minutes": {"product": "voice", "included": "100.5", "charge": graduated(
            {"up_to": "1000", "unit_amount": "0.04"}, {"up_to": None, "flat_amount": "50", "unit_amount": "0.03"})},
        "campaign_recipients": {"product": "convert", "included": 0, "charge": {
            "model": "package", "size": "1000", "amount": "20.00", "free_units": "500"}},
    }))
    assert parse(doc) == Catalog(
        version=1,
        effective_from=date(2025, 1, 1),
        currencies={"USD": 2, "JPY": 0},
        plans=(  # in rank order, whatever the file's order
            Plan("basic", 1, "USD", D("60.00"), {
                "voice_minutes": MetricPrice("voice_minutes", "voice", D("100.5"), Charge(
                    "graduated", tiers=(Tier(D(1000), D("0.04"), D(0)), Tier(None, D("0.03"), D(50))))),
                "campaign_recipients": MetricPrice("campaign_recipients", "convert", D(0), Charge(
                    "package", package_size=D(1000), package_amount=D(20), free_units=D(500))),
            }),
            Plan("pro", 2, "JPY", D(5000), {
                "billable_tickets": MetricPrice("billable_tickets", "helpdesk", D(300),
                                                Charge("per_unit", unit_amount=D("0.40"))),
            }),
        ),
    )


def test_plan_and_minor_units_lookups():
    catalog = parse(catalog_doc())
    assert catalog.plan("pro").rank == 2
    assert catalog.minor_units("JPY") == 0
    with pytest.raises(KeyError, match=re.escape("plan 'gold' is not in the pricing catalog (plans: basic, pro)")):
        catalog.plan("gold")
    with pytest.raises(KeyError, match=re.escape("currency 'EUR' is not in the pricing catalog (currencies: USD, JPY)")):
        catalog.minor_units("EUR")


# --- file-level errors ----------------------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with raises(f"{path}: file not found"):
        load_catalog(path)


def test_catalog_error_is_a_config_error():
    assert issubclass(CatalogError, ConfigError) and issubclass(CatalogError, ValueError)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nplans: [unclosed\n", encoding="utf-8")
    with pytest.raises(CatalogError, match=f"^{re.escape(str(path))}: not valid YAML: "):
        load_catalog(path)


def test_duplicate_yaml_key(tmp_path):
    # plain YAML would keep the second unit_amount without a word
    path = tmp_path / "dup.yaml"
    path.write_text("version: 1\ncharge: {model: per_unit, unit_amount: '0.40', unit_amount: '0.04'}\n",
                    encoding="utf-8")
    with pytest.raises(CatalogError, match=f"^{re.escape(str(path))}: not valid YAML: .*duplicate key 'unit_amount'"):
        load_catalog(path)


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "pricing.yaml"
    path.write_text("version: 1\neffective_from: 2025-01-01\ncurrencies: {USD: 2}\nplans: []\n", encoding="utf-8")
    with raises(f"{path}: plans: expected a non-empty list of plans, got []"):
        load_catalog(path)


@pytest.mark.parametrize("doc", [["a"], "text", None], ids=["list", "scalar", "empty"])
def test_top_level_must_be_a_mapping(doc):
    with raises(f"{WHERE}: expected a mapping at the top level"):
        parse(doc)


def test_unknown_top_level_key():
    with raises(f"{WHERE}: unknown keys ['plan'] (allowed: ['currencies', 'effective_from', 'plans', 'version'])"):
        parse(catalog_doc(plan=[]))


@pytest.mark.parametrize("version", [0, "1", True, 1.0], ids=["zero", "string", "bool", "float"])
def test_version_must_be_a_positive_integer(version):
    with raises(f"{WHERE}: version: must be a positive integer, got {version!r}"):
        parse(catalog_doc(version=version))


def test_missing_version():
    doc = catalog_doc()
    del doc["version"]
    with raises(f"{WHERE}: 'version' is required"):
        parse(doc)


@pytest.mark.parametrize("value", ["2025-13-01", "January", 20250101], ids=["bad month", "text", "integer"])
def test_effective_from_must_be_a_date(value):
    with raises(f"{WHERE}: effective_from: expected a date (YYYY-MM-DD), got {value!r}"):
        parse(catalog_doc(effective_from=value))


def test_effective_from_is_not_a_timestamp():
    doc = yaml_doc("effective_from: 2025-01-01 10:00:00")
    with raises(f"{WHERE}: effective_from: expected a date (YYYY-MM-DD), got '2025-01-01T10:00:00'"):
        parse(doc)


def test_effective_from_must_be_a_day_of_the_calendar():
    # the schema's pattern checks the form; the calendar is checked in Python
    with raises(f"{WHERE}: effective_from: '2025-02-30' is not a day of the calendar"):
        parse(catalog_doc(effective_from="2025-02-30"))


def test_unquoted_dates_in_a_file(tmp_path):
    """The file is read as an editor reads it: an unquoted date is its text, checked by the schema."""
    text = DEFAULT_CATALOG.read_text(encoding="utf-8")
    assert "\neffective_from: 2025-01-01\n" in text
    path = tmp_path / "pricing.yaml"
    path.write_text(text.replace("\neffective_from: 2025-01-01\n", "\neffective_from: 2025-03-01\n"), encoding="utf-8")
    assert load_catalog(path).effective_from == date(2025, 3, 1)
    path.write_text(text.replace("\neffective_from: 2025-01-01\n", "\neffective_from: 2025-03-01 10:00:00\n"),
                    encoding="utf-8")
    with raises(f"{path}: effective_from: expected a date (YYYY-MM-DD), got '2025-03-01 10:00:00'"):
        load_catalog(path)


def yaml_doc(line: str) -> dict:
    import yaml

    doc = catalog_doc()
    doc.update(yaml.safe_load(line))
    return doc


# --- currencies ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [{}, ["USD"]], ids=["empty", "list"])
def test_currencies_must_be_a_mapping(value):
    with raises(f"{WHERE}: currencies: expected a non-empty mapping of ISO 4217 code to minor-unit digits, "
                f"e.g. {{USD: 2}}, got {value!r}"):
        parse(catalog_doc(currencies=value))


def test_currency_code_must_be_iso_4217():
    with raises(f"{WHERE}: currencies: a currency is a 3-letter upper-case ISO 4217 code, got 'usd'"):
        parse(catalog_doc(currencies={"usd": 2}))


@pytest.mark.parametrize("digits", [-1, 5, "2", 2.0], ids=["negative", "too many", "string", "float"])
def test_minor_unit_digits(digits):
    with raises(f"{WHERE}: currencies.USD: minor-unit digits must be an integer from 0 to 4, got {digits!r}"):
        parse(catalog_doc(currencies={"USD": digits}))


# --- plans ----------------------------------------------------------------------------------

def test_plans_must_be_a_non_empty_list():
    with raises(f"{WHERE}: plans: expected a non-empty list of plans, got {{'basic': {{}}}}"):
        parse(catalog_doc(plans={"basic": {}}))


def test_plan_must_be_a_mapping():
    with raises(f"{WHERE}: plans[1]: expected a mapping, got 'pro'"):
        parse(catalog_doc(plan(), "pro"))


def test_unknown_plan_key():
    with raises(f"{AT}: unknown keys ['price'] (allowed: ['base_fee', 'currency', 'id', 'metrics', 'rank'])"):
        parse(catalog_doc(plan(price="1")))


@pytest.mark.parametrize("key", ["rank", "currency", "base_fee", "metrics"])
def test_plan_keys_are_required(key):
    raw = plan()
    del raw[key]
    with raises(f"{AT}: '{key}' is required"):
        parse(catalog_doc(raw))


def test_missing_plan_id():
    raw = plan()
    del raw["id"]
    with raises(f"{WHERE}: plans[0]: 'id' is required"):
        parse(catalog_doc(raw))


@pytest.mark.parametrize("plan_id", ["", " pro", 3], ids=["empty", "spaces", "integer"])
def test_plan_id_must_be_a_string(plan_id):
    with raises(f"{WHERE}: plans[0].id: expected a non-empty string without surrounding spaces, got {plan_id!r}"):
        parse(catalog_doc(plan(plan_id)))


def test_duplicate_plan_id():
    with raises(f"{WHERE}: plans[1].id: 'basic' is already the id of plans[0]"):
        parse(catalog_doc(plan(), plan("basic", 2)))


@pytest.mark.parametrize("rank", [0, "2", True], ids=["zero", "string", "bool"])
def test_rank_must_be_a_positive_integer(rank):
    with raises(f"{AT}.rank: expected a positive integer, got {rank!r}"):
        parse(catalog_doc(plan(rank=rank)))


def test_duplicate_rank():
    with raises(f"{WHERE}: plans[1].rank: 1 is already the rank of plans[0] (basic); "
                f"ranks order upgrades and downgrades, so each plan needs its own"):
        parse(catalog_doc(plan(), plan("pro", 1)))


def test_currency_must_be_listed():
    with raises(f"{AT}.currency: 'EUR' is not listed under currencies (USD, JPY)"):
        parse(catalog_doc(plan(currency="EUR")))


@pytest.mark.parametrize("metrics", [{}, ["billable_tickets"]], ids=["empty", "list"])
def test_metrics_must_be_a_non_empty_mapping(metrics):
    with raises(f"{AT}.metrics: expected a non-empty mapping of metric to price, got {metrics!r}"):
        parse(catalog_doc(plan(metrics=metrics)))


@pytest.mark.parametrize("name", ["", " voice_minutes", "voice_minutes\n", 7], ids=["empty", "spaces", "newline", "integer"])
def test_metric_name_must_be_a_plain_string(name):
    with raises(f"{AT}.metrics: a metric name is a non-empty string without surrounding spaces, got {name!r}"):
        parse(catalog_doc(plan(metrics={name: plan()["metrics"]["billable_tickets"]})))


# --- amounts ----------------------------------------------------------------------------------

def test_float_amount_asks_for_a_string():
    with raises(f"{AT}.base_fee: write decimals as strings, e.g. \"0.1\" in quotes; "
                f"the YAML float 0.1 is binary and inexact"):
        parse(catalog_doc(plan(base_fee=0.1)))


def test_integer_amounts_are_exact_and_accepted():
    assert parse(catalog_doc(plan(base_fee=60))).plan("basic").base_fee == D(60)


@pytest.mark.parametrize("value", ["1,000.00", "$60", "1e3", "NaN", " 60", "", True, None],
                         ids=["comma", "symbol", "exponent", "nan", "space", "empty", "bool", "null"])
def test_amount_must_be_a_decimal_string(value):
    with raises(f"{AT}.base_fee: expected a decimal string like \"0.40\", got {value!r}"):
        parse(catalog_doc(plan(base_fee=value)))


@pytest.mark.parametrize("value", ["-0.01", -5], ids=["string", "integer"])
def test_negative_amount(value):
    with raises(f"{AT}.base_fee: must not be negative, got {value!r}"):
        parse(catalog_doc(plan(base_fee=value)))


def test_amount_with_more_than_six_decimals():
    with raises(f"{CHARGE}.unit_amount: at most 6 decimal places, got '0.0000001'"):
        parse(with_charge({"model": "per_unit", "unit_amount": "0.0000001"}))


def test_amount_too_large():
    with raises(f"{AT}.base_fee: must be less than 100,000,000, got '100000000'"):
        parse(catalog_doc(plan(base_fee="100000000")))


def test_quantity_too_large():
    with raises(f"{TICKETS}.included: must be less than 10,000,000,000,000,000, got '10000000000000000'"):
        parse(with_metric(included="10000000000000000"))


def test_the_schema_states_the_limits_the_engine_relies_on():
    """pricing.schema.json states the limits; MODELS, MAX_SCALE, MONEY_LIMIT, QUANTITY_LIMIT and
    MAX_MINOR_UNITS name them for the Spark engine: the two agree at each edge."""
    assert tuple(config_schema("pricing")["$defs"]["charge"]["properties"]["model"]["enum"]) == MODELS
    tiny = D(1).scaleb(-MAX_SCALE)
    assert parse(catalog_doc(plan(base_fee=str(MONEY_LIMIT - tiny)))).plan("basic").base_fee == MONEY_LIMIT - tiny
    assert parse(with_metric(included=str(QUANTITY_LIMIT - tiny))).plan("basic").metrics[
        "billable_tickets"].included == QUANTITY_LIMIT - tiny
    with pytest.raises(CatalogError, match=r"base_fee: must be less than "):
        parse(catalog_doc(plan(base_fee=f"{MONEY_LIMIT:f}")))
    with pytest.raises(CatalogError, match=r"included: must be less than "):
        parse(with_metric(included=f"{QUANTITY_LIMIT:f}"))
    with pytest.raises(CatalogError, match=rf"at most {MAX_SCALE} decimal places"):
        parse(catalog_doc(plan(base_fee=f"{tiny / 10:f}")))
    assert parse(catalog_doc(currencies={"USD": 2, "KWD": 3})).minor_units("KWD") == 3 <= MAX_MINOR_UNITS
    with pytest.raises(CatalogError, match=rf"from 0 to {MAX_MINOR_UNITS}, got {MAX_MINOR_UNITS + 1}"):
        parse(catalog_doc(currencies={"USD": MAX_MINOR_UNITS + 1}))


# --- metric entries -------------------------------------------------------------------------

def test_unknown_metric_key():
    with raises(f"{TICKETS}: unknown keys ['unit_amount'] (allowed: ['charge', 'included', 'product'])"):
        parse(with_metric(unit_amount="0.40"))


@pytest.mark.parametrize("key", ["product", "included", "charge"])
def test_metric_keys_are_required(key):
    with raises(f"{TICKETS}: '{key}' is required"):
        parse(with_metric(**{key: None}))


def test_unknown_product():
    with raises(f"{TICKETS}.product: must be one of helpdesk, automate, voice, sms, convert "
                f"(the event contract's products); got 'tickets'"):
        parse(with_metric(product="tickets"))


def test_metric_belongs_to_one_product():
    pro = plan("pro", 2)
    pro["metrics"]["billable_tickets"]["product"] = "automate"
    with raises(f"{WHERE}: plans[1].metrics.billable_tickets.product: 'automate', but plans[0] (basic) "
                f"puts billable_tickets under 'helpdesk'; a metric belongs to one product"):
        parse(catalog_doc(plan(), pro))


def test_negative_included_quota():
    with raises(f"{TICKETS}.included: must not be negative, got '-1'"):
        parse(with_metric(included="-1"))


# --- charges --------------------------------------------------------------------------------

def test_unknown_model():
    with raises(f"{CHARGE}.model: must be one of ('per_unit', 'graduated', 'volume', 'package'), got 'tiered'"):
        parse(with_charge({"model": "tiered", "tiers": []}))


def test_missing_model():
    with raises(f"{CHARGE}: 'model' is required"):
        parse(with_charge({"unit_amount": "0.40"}))


def test_charge_keys_of_another_model():
    with raises(f"{CHARGE}: unknown keys ['tiers'] (allowed: ['model', 'unit_amount'])"):
        parse(with_charge({"model": "per_unit", "unit_amount": "0.40", "tiers": []}))


def test_per_unit_needs_unit_amount():
    with raises(f"{CHARGE}: 'unit_amount' is required"):
        parse(with_charge({"model": "per_unit"}))


@pytest.mark.parametrize("key", ["size", "amount"])
def test_package_keys_are_required(key):
    charge = {"model": "package", "size": "1000", "amount": "20.00"}
    del charge[key]
    with raises(f"{CHARGE}: '{key}' is required"):
        parse(with_charge(charge))


def test_package_size_must_be_positive():
    with raises(f"{CHARGE}.size: must be greater than 0, got '0'"):
        parse(with_charge({"model": "package", "size": "0", "amount": "20.00"}))


def test_package_free_units_float():
    with raises(f"{CHARGE}.free_units: write decimals as strings, e.g. \"10.5\" in quotes; "
                f"the YAML float 10.5 is binary and inexact"):
        parse(with_charge({"model": "package", "size": "100", "amount": "5", "free_units": 10.5}))


# --- tiers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tiers", [[], None], ids=["empty", "null"])
def test_tiers_must_be_a_non_empty_list(tiers):
    with raises(f"{CHARGE}.tiers: expected a non-empty list of tiers, got {tiers!r}"):
        parse(with_charge({"model": "volume", "tiers": tiers}))


def test_unknown_tier_key():
    with raises(f"{CHARGE}.tiers[0]: unknown keys ['from'] (allowed: ['flat_amount', 'unit_amount', 'up_to'])"):
        parse(with_charge(graduated({"from": "0", "up_to": None, "unit_amount": "1"})))


def test_tier_up_to_is_required():
    with raises(f"{CHARGE}.tiers[0]: 'up_to' is required"):
        parse(with_charge(graduated({"unit_amount": "1"})))


def test_tier_needs_an_amount():
    with raises(f"{CHARGE}.tiers[0]: give unit_amount, flat_amount or both"):
        parse(with_charge(graduated({"up_to": None})))


def test_unordered_tiers():
    with raises(f"{CHARGE}.tiers[1].up_to: tiers must be strictly increasing, but '5' is not above "
                f"the previous tier's up_to 10"):
        parse(with_charge(graduated({"up_to": "10", "unit_amount": "1"}, {"up_to": "5", "unit_amount": "1"},
                                    {"up_to": None, "unit_amount": "1"})))


def test_overlapping_tiers():
    with raises(f"{CHARGE}.tiers[1].up_to: tiers must be strictly increasing, but '10.0' is not above "
                f"the previous tier's up_to 10"):
        parse(with_charge(graduated({"up_to": "10", "unit_amount": "1"}, {"up_to": "10.0", "unit_amount": "1"},
                                    {"up_to": None, "unit_amount": "1"})))


def test_unbounded_tier_must_be_last():
    with raises(f"{CHARGE}.tiers[0].up_to: only the last tier may be unbounded (null), but tiers[1] follows it"):
        parse(with_charge(graduated({"up_to": None, "unit_amount": "1"}, {"up_to": "10", "unit_amount": "1"})))


def test_last_tier_must_be_unbounded():
    with raises(f"{CHARGE}.tiers[1].up_to: the last tier must be unbounded (up_to: null), got '20'"):
        parse(with_charge({"model": "volume", "tiers": [{"up_to": "10", "unit_amount": "1"},
                                                        {"up_to": "20", "unit_amount": "1"}]}))


def test_tier_bound_must_be_positive():
    with raises(f"{CHARGE}.tiers[0].up_to: must be greater than 0, got '0'"):
        parse(with_charge(graduated({"up_to": "0", "unit_amount": "1"}, {"up_to": None, "unit_amount": "1"})))


def test_negative_tier_amount():
    with raises(f"{CHARGE}.tiers[1].flat_amount: must not be negative, got '-2'"):
        parse(with_charge(graduated({"up_to": "10", "unit_amount": "1"},
                                    {"up_to": None, "unit_amount": "1", "flat_amount": "-2"})))


# --- as Spark frames ------------------------------------------------------------------------

DEC = T.DecimalType(38, 6)


def test_plans_frame(spark):
    df = plans_frame(spark, load_catalog())
    assert [(f.name, f.dataType) for f in df.schema] == [
        ("plan_id", T.StringType()), ("plan_rank", T.IntegerType()), ("currency", T.StringType()),
        ("minor_units", T.IntegerType()), ("base_fee", DEC)]
    assert [tuple(r) for r in df.orderBy("plan_rank").collect()] == [
        ("starter", 1, "USD", 2, D("10")), ("basic", 2, "USD", 2, D("60")), ("pro", 3, "USD", 2, D("360")),
        ("advanced", 4, "USD", 2, D("900")), ("enterprise", 5, "USD", 2, D("2500"))]


def test_prices_frame(spark):
    doc = catalog_doc(plan("pro", 2, currency="JPY"), plan(metrics={
        "voice_minutes": {"product": "voice", "included": "100.5", "charge": graduated(
            {"up_to": "1000", "unit_amount": "0.04"}, {"up_to": None, "unit_amount": "0.03", "flat_amount": "5"})},
        "campaign_recipients": {"product": "convert", "included": "0", "charge": {
            "model": "package", "size": "1000", "amount": "20.00", "free_units": "500"}},
    }))
    df = prices_frame(spark, parse(doc))
    tier = T.StructType([T.StructField("up_to", DEC), T.StructField("unit_amount", DEC),
                         T.StructField("flat_amount", DEC)])
    assert [(f.name, f.dataType) for f in df.schema] == [
        ("plan_id", T.StringType()), ("metric", T.StringType()), ("product", T.StringType()),
        ("included", DEC), ("model", T.StringType()), ("unit_amount", DEC), ("tiers", T.ArrayType(tier)),
        ("package_size", DEC), ("package_amount", DEC), ("free_units", DEC), ("currency", T.StringType()),
        ("minor_units", T.IntegerType())]
    rows = {(r.plan_id, r.metric): r.asDict(recursive=True) for r in df.collect()}
    assert rows == {
        ("basic", "voice_minutes"): {
            "plan_id": "basic", "metric": "voice_minutes", "product": "voice", "included": D("100.5"),
            "model": "graduated", "unit_amount": None,
            "tiers": [{"up_to": D(1000), "unit_amount": D("0.04"), "flat_amount": D(0)},
                      {"up_to": None, "unit_amount": D("0.03"), "flat_amount": D(5)}],
            "package_size": None, "package_amount": None, "free_units": D(0), "currency": "USD", "minor_units": 2},
        ("basic", "campaign_recipients"): {
            "plan_id": "basic", "metric": "campaign_recipients", "product": "convert", "included": D(0),
            "model": "package", "unit_amount": None, "tiers": None, "package_size": D(1000),
            "package_amount": D(20), "free_units": D(500), "currency": "USD", "minor_units": 2},
        ("pro", "billable_tickets"): {
            "plan_id": "pro", "metric": "billable_tickets", "product": "helpdesk", "included": D(300),
            "model": "per_unit", "unit_amount": D("0.40"), "tiers": None, "package_size": None,
            "package_amount": None, "free_units": D(0), "currency": "JPY", "minor_units": 0},
    }


def test_currency_digits_must_agree_with_iso_4217():
    with raises(f"{WHERE}: currencies.JPY: ISO 4217 gives JPY 0 minor-unit digits (what exports use), got 2"):
        parse(catalog_doc(currencies={"USD": 2, "JPY": 2}))
