"""The pricing engine: the Python reference and the Spark transforms on the same cases,
Stripe's published tier examples, rounding, and random charges priced both ways."""
from __future__ import annotations

import random
from decimal import Decimal

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.billing.catalog import CHARGE_FIELDS, Charge, Tier, charge_values, load_catalog, prices_frame
from pipelines.billing.pricing import charge_amount, round_minor, with_charge_amount, with_rounded_amount
from tests.unit.frames import local_frame

D = Decimal


def tiers(*specs) -> tuple[Tier, ...]:
    """(up_to, unit_amount[, flat_amount]) triples; up_to None = unbounded."""
    return tuple(Tier(None if s[0] is None else D(s[0]), D(s[1]), D(s[2] if len(s) > 2 else "0")) for s in specs)


# Stripe's tiered-pricing page: units 1-5 at 7.00, 6-10 at 6.50, 11+ at 6.00
STRIPE = tiers(("5", "7.00"), ("10", "6.50"), (None, "6.00"))
VOLUME = Charge("volume", tiers=STRIPE)
GRADUATED = Charge("graduated", tiers=STRIPE)
# graduated with flat fees: 0-10 at 10 + flat 2, 11-20 at 5 + flat 3, 21+ at 1
GRADUATED_FLAT = Charge("graduated", tiers=tiers(("10", "10", "2"), ("20", "5", "3"), (None, "1")))
# a flat fee on the first volume tier is still nothing on zero usage
VOLUME_FLAT = Charge("volume", tiers=tiers(("100", "0.50", "20"), (None, "0.40", "25")))
PER_UNIT = Charge("per_unit", unit_amount=D("0.0125"))
PACKAGE = Charge("package", package_size=D("1000"), package_amount=D("20.00"))
PACKAGE_FREE = Charge("package", package_size=D("100"), package_amount=D("5.00"), free_units=D("250"))
# voice minutes: fractional quantities and fractional tier bounds
MINUTES_GRADUATED = Charge("graduated", tiers=tiers(("100.5", "0.04"), (None, "0.03")))
MINUTES_VOLUME = Charge("volume", tiers=tiers(("100.5", "0.04"), (None, "0.03")))
MINUTES_PACKAGE = Charge("package", package_size=D("0.5"), package_amount=D("0.02"))

HUGE = Charge("per_unit", unit_amount=D("99999999.999999"))
HUGE_UNITS = D("999999999999999.999999")
HUGE_AMOUNT = "99999999999998999999900.000000000001"

CASES = [
    # (case, charge, units, exact amount)
    ("volume 5", VOLUME, "5", "35.00"),
    ("volume 6", VOLUME, "6", "39.00"),
    ("volume 20", VOLUME, "20", "120.00"),
    ("volume 25", VOLUME, "25", "150.00"),
    ("graduated 5", GRADUATED, "5", "35.00"),
    ("graduated 6", GRADUATED, "6", "41.50"),
    ("graduated 20", GRADUATED, "20", "127.50"),
    ("graduated 25", GRADUATED, "25", "157.50"),
    ("graduated flat 1", GRADUATED_FLAT, "1", "12"),
    ("graduated flat 10", GRADUATED_FLAT, "10", "102"),
    ("graduated flat 12", GRADUATED_FLAT, "12", "115"),
    ("graduated flat 21", GRADUATED_FLAT, "21", "156"),  # 100 + 2 + 50 + 3 + 1
    ("volume flat 100", VOLUME_FLAT, "100", "70"),
    ("volume flat 101", VOLUME_FLAT, "101", "65.40"),
    ("per unit", PER_UNIT, "1001", "12.5125"),
    ("package rounded up", PACKAGE, "1001", "40.00"),
    ("package exact multiple", PACKAGE, "3000", "60.00"),
    ("package one unit", PACKAGE, "1", "20.00"),
    ("package within free units", PACKAGE_FREE, "250", "0"),
    ("package past free units", PACKAGE_FREE, "250.000001", "5.00"),
    ("package free units then multiple", PACKAGE_FREE, "450", "10.00"),
    ("minutes graduated below bound", MINUTES_GRADUATED, "100.5", "4.020"),
    ("minutes graduated across bound", MINUTES_GRADUATED, "100.75", "4.0275"),  # 100.5*0.04 + 0.25*0.03
    ("minutes graduated tiny", MINUTES_GRADUATED, "0.000001", "0.00000004"),
    ("minutes volume at bound", MINUTES_VOLUME, "100.5", "4.020"),
    ("minutes volume past bound", MINUTES_VOLUME, "100.500001", "3.01500003"),
    ("minutes package", MINUTES_PACKAGE, "1.25", "0.06"),
    ("largest values", HUGE, str(HUGE_UNITS), HUGE_AMOUNT),
    *[(f"{charge.model} zero {i}", charge, "0", "0") for i, charge in enumerate(
        [VOLUME, GRADUATED, GRADUATED_FLAT, VOLUME_FLAT, PER_UNIT, PACKAGE, PACKAGE_FREE])],
]

ROUNDING = [
    # (amount, minor-unit digits, rounded)
    ("1.005", 2, "1.01"),
    ("1.015", 2, "1.02"),
    ("1.0049999", 2, "1.00"),
    ("2.675", 2, "2.68"),  # 2.67 as a double; exact decimal half-up is 2.68
    ("-1.005", 2, "-1.01"),  # away from zero on a tie
    ("12.5125", 2, "12.51"),
    ("0.004999999999", 2, "0.00"),
    ("157.5", 0, "158"),  # JPY
    ("156.49", 0, "156"),
    ("0.5", 0, "1"),
    ("1.00045", 4, "1.0005"),
    ("7", 2, "7.00"),
]


def case_frame(spark, rows: list[tuple]):
    """(case, units, Charge) -> a frame with the prices_frame charge columns."""
    schema = T.StructType([T.StructField("case", T.StringType()),
                           T.StructField("billable_units", T.DecimalType(38, 6)), *CHARGE_FIELDS])
    return local_frame(spark, [(case, units, *charge_values(charge)) for case, units, charge in rows], schema)


def spark_amounts(df, col: str = "amount_exact") -> dict[str, Decimal | None]:
    return {r["case"]: r[col] for r in df.select("case", col).collect()}


# --- Python reference ------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "charge", "units", "expected"), CASES, ids=[c[0] for c in CASES])
def test_charge_amount(case, charge, units, expected):
    assert charge_amount(charge, D(units)) == D(expected)


@pytest.mark.parametrize(("amount", "digits", "expected"), ROUNDING, ids=[f"{r[0]}@{r[1]}" for r in ROUNDING])
def test_round_minor(amount, digits, expected):
    rounded = round_minor(D(amount), digits)
    assert rounded == D(expected)
    assert rounded.as_tuple().exponent == -digits


def test_charge_amount_refuses_negative_and_float_units():
    with pytest.raises(ValueError, match="units must not be negative"):
        charge_amount(PER_UNIT, D("-1"))
    with pytest.raises(TypeError, match="units must be a Decimal"):
        charge_amount(PER_UNIT, 0.1)


def test_charge_amount_keeps_every_digit():
    # the largest quantity and price the catalog allows: a 35-digit product, which
    # Python's default 28-digit decimal context would round
    assert charge_amount(HUGE, HUGE_UNITS) == D(HUGE_AMOUNT)
    assert HUGE_UNITS * HUGE.unit_amount != D(HUGE_AMOUNT)


# --- Spark ------------------------------------------------------------------------------------

def test_spark_prices_every_case_like_the_reference(spark):
    rows = [(case, D(units), charge) for case, charge, units, _ in CASES]
    actual = case_frame(spark, rows).transform(with_charge_amount())
    assert actual.schema["amount_exact"].dataType == T.DecimalType(38, 12)
    assert spark_amounts(actual) == {case: D(expected) for case, _, _, expected in CASES}


def test_spark_null_units_and_missing_price(spark):
    df = case_frame(spark, [("no units", None, GRADUATED), ("zero", D(0), VOLUME_FLAT)])
    no_price = df.filter(F.col("case") == "zero").withColumns(
        {"case": F.lit("no price"), "model": F.lit(None).cast("string")})
    actual = df.unionByName(no_price).transform(with_charge_amount())
    assert spark_amounts(actual) == {"no units": None, "zero": D(0), "no price": None}


def test_spark_units_column_name_and_integer_units(spark):
    df = case_frame(spark, [("ints", D(6), GRADUATED)]).withColumn("n", F.lit(6).cast("bigint"))
    actual = df.transform(with_charge_amount(units_col="n", out="exact"))
    assert spark_amounts(actual, "exact") == {"ints": D("41.50")}


def test_spark_refuses_units_with_more_than_six_decimals(spark):
    df = case_frame(spark, [("x", D(1), PER_UNIT)]).withColumn("billable_units", F.lit(1.5))
    with pytest.raises(TypeError, match=r"^billable_units must be a decimal with at most 6 decimal places"):
        df.transform(with_charge_amount())


@pytest.mark.parametrize(("units", "model", "message"), [
    (D(-1), "per_unit", "pricing: negative billable_units -1"),
    (D(1), "tiered", "pricing: unknown charge model tiered"),
], ids=["negative units", "unknown model"])
def test_spark_fails_loudly_rather_than_bill_wrong(spark, units, model, message):
    df = case_frame(spark, [("x", units, PER_UNIT)]).withColumn("model", F.lit(model))
    with pytest.raises(Exception, match=message):
        df.transform(with_charge_amount()).collect()


def test_spark_rounding(spark):
    schema = "case string, amount_exact decimal(38,12), minor_units int"
    rows = [(f"{a}@{d}", D(a), d) for a, d, _ in ROUNDING] + [("null", None, 2)]
    actual = local_frame(spark, rows, schema).transform(with_rounded_amount())
    assert actual.schema["amount"].dataType == T.DecimalType(38, 6)
    assert spark_amounts(actual, "amount") == {f"{a}@{d}": D(e) for a, d, e in ROUNDING} | {"null": None}


def test_spark_rounding_refuses_unknown_minor_units(spark):
    df = local_frame(spark, [("x", D("1.005"), 7)], "case string, amount_exact decimal(38,12), minor_units int")
    with pytest.raises(Exception, match="pricing: minor_units must be 0 to 4, got 7"):
        df.transform(with_rounded_amount()).collect()


def test_spark_prices_the_default_catalog_like_the_reference(spark):
    catalog = load_catalog()
    units = [D(u) for u in ("0", "1", "499.5", "1000", "1000.000001", "5000", "20001", "123456.789")]
    units_df = local_frame(spark, [(u,) for u in units], "billable_units decimal(38,6)")
    actual = (
        prices_frame(spark, catalog).crossJoin(units_df)
        .transform(with_charge_amount()).transform(with_rounded_amount())
        .select("plan_id", "metric", "billable_units", "amount_exact", "amount").collect()
    )
    expected = {
        (plan.id, price.metric, u): (charge_amount(price.charge, u),
                                     round_minor(charge_amount(price.charge, u), catalog.minor_units(plan.currency)))
        for plan in catalog.plans for price in plan.metrics.values() for u in units
    }
    assert {(r.plan_id, r.metric, r.billable_units): (r.amount_exact, r.amount) for r in actual} == expected


def test_spark_exact_at_the_catalog_limits(spark):
    # the largest values the catalog admits, where a decimal type one digit too small
    # would round (products, sums of tiers) or misjudge a package boundary
    top, units = HUGE.unit_amount, HUGE_UNITS
    charges = [
        Charge("graduated", tiers=(Tier(D("0.000001"), top, top), Tier(D("9999999999999999.999998"), top, top),
                                   Tier(None, top, top))),
        Charge("volume", tiers=(Tier(D("0.000001"), top, top), Tier(None, top, top))),
        Charge("package", package_size=top, package_amount=top),
        Charge("package", package_size=D("99999999.999997"), package_amount=top, free_units=D("0.000001")),
    ]
    quantities = [units, top * 3, top * 3 + D("0.000001"), top * 3 - D("0.000001"), D("0.000001")]
    rows = [(f"{i}:{q}", q, charge) for i, charge in enumerate(charges) for q in quantities]
    actual = case_frame(spark, rows).transform(with_charge_amount())
    assert spark_amounts(actual) == {case: charge_amount(charge, q) for case, q, charge in rows}


# --- property: random charges, Spark == reference ---------------------------------------------

def _random_decimal(rng: random.Random, whole_digits: int, scale: int) -> Decimal:
    return D(rng.randrange(10 ** (whole_digits + scale))).scaleb(-scale)


def _random_charge(rng: random.Random) -> Charge:
    model = rng.choice(["per_unit", "graduated", "volume", "package"])
    price = lambda: _random_decimal(rng, rng.choice([0, 1, 3, 7]), rng.choice([0, 2, 4, 6]))  # noqa: E731
    if model == "per_unit":
        return Charge(model, unit_amount=price())
    if model == "package":
        size = _random_decimal(rng, rng.choice([1, 3, 5]), rng.choice([0, 3, 6])) or D(1)
        return Charge(model, package_size=size, package_amount=price(),
                      free_units=rng.choice([D(0), _random_decimal(rng, 3, rng.choice([0, 6]))]))
    bounds: list[Decimal] = []
    bound = D(0)
    for _ in range(rng.randint(0, 4)):
        bound += _random_decimal(rng, rng.choice([1, 2, 4]), rng.choice([0, 1, 6])) or D("0.000001")
        bounds.append(bound)
    flat = lambda: rng.choice([D(0), D(0), price()])  # noqa: E731
    return Charge(model, tiers=tuple(Tier(b, price(), flat()) for b in [*bounds, None]))


def _random_units(rng: random.Random, charge: Charge) -> Decimal:
    # exact tier bounds and their neighbours are where off-by-one mistakes show
    bounds = [t.up_to for t in charge.tiers if t.up_to is not None]
    if bounds and rng.random() < 0.4:
        return max(rng.choice(bounds) + rng.choice([D("-0.000001"), D(0), D("0.000001")]), D(0))
    if charge.model == "package" and rng.random() < 0.4:
        return charge.free_units + charge.package_size * rng.randint(0, 5)
    if rng.random() < 0.1:
        return D(0)
    return _random_decimal(rng, rng.choice([1, 3, 6, 12]), rng.choice([0, 2, 6]))


def test_spark_equals_reference_on_random_charges(spark):
    rng = random.Random(20250101)
    rows = []
    for i in range(400):
        charge = _random_charge(rng)
        rows.append((f"c{i}", _random_units(rng, charge), charge))
    digits = {case: i % 5 for i, (case, _, _) in enumerate(rows)}
    actual = (
        case_frame(spark, rows)
        .withColumn("minor_units", F.expr("cast(substring(case, 2) as int) % 5"))
        .transform(with_charge_amount()).transform(with_rounded_amount())
        .select("case", "amount_exact", "amount").collect()
    )
    expected = {}
    for case, units, charge in rows:
        exact = charge_amount(charge, units)
        expected[case] = (exact, round_minor(exact, digits[case]))
    assert {r.case: (r.amount_exact, r.amount) for r in actual} == expected
    # the sample reaches every model, tier bounds and non-zero amounts
    assert {charge.model for _, _, charge in rows} == {"per_unit", "graduated", "volume", "package"}
    assert sum(1 for exact, _ in expected.values() if exact) > 300
