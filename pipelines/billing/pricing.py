"""The pricing engine: the exact charge for a quantity of billable units, and the one
rounding of an invoice line to its currency's minor unit (half-up).

Two implementations of the same rules: a pure-Python reference over Decimals
(`charge_amount`, `round_minor`) and Spark transforms built from built-in functions only
(`with_charge_amount`, `with_rounded_amount`). Tests hold them equal on random charges.

Charge models (tiers as in Stripe; `up_to` inclusive, None = unbounded):
  per_unit   units * unit_amount
  graduated  each unit at its own tier's unit_amount, plus the flat_amount of every tier
             the quantity reaches into (units above the previous tier's up_to)
  volume     all units at the unit_amount of the first tier with units <= up_to, plus that
             tier's flat_amount; zero units cost nothing
  package    ceil(max(units - free_units, 0) / size) * amount
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal, Inexact, InvalidOperation, Overflow, localcontext

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.billing.catalog import DECIMAL, MAX_MINOR_UNITS, Charge

# Exactness traps: a charge that cannot be represented exactly fails instead of rounding.
_EXACT = Context(prec=120, traps=[Inexact, InvalidOperation, Overflow])
_ROUNDING = Context(prec=120, rounding=ROUND_HALF_UP, traps=[InvalidOperation, Overflow])

# Spark operand sizes, chosen so that every product and sum is exact. Spark's decimal
# multiply gives precision p1 + p2 + 1 and scale s1 + s2, and above 38 digits it cuts the
# scale; quantity x price is decimal(37,12), and the sum of two of those is decimal(38,12).
# The catalog's limits (quantities < 10^16, amounts and package sizes < 10^8, 6 decimal
# places) keep every catalog value inside these types.
QTY = T.DecimalType(22, 6)
PRICE = T.DecimalType(14, 6)
EXACT = T.DecimalType(37, 12)
AMOUNT_EXACT = T.DecimalType(38, 12)  # the type of the exact-amount column


def charge_amount(charge: Charge, units: Decimal) -> Decimal:
    """The exact, unrounded charge for `units` billable units (>= 0)."""
    if isinstance(units, bool) or not isinstance(units, (Decimal, int)):
        raise TypeError(f"units must be a Decimal, got {units!r}")
    units = Decimal(units)
    if units < 0:
        raise ValueError(f"units must not be negative, got {units}")
    with localcontext(_EXACT):
        if charge.model == "per_unit":
            return units * charge.unit_amount
        if charge.model == "graduated":
            total, lower = Decimal(0), Decimal(0)
            for tier in charge.tiers:
                if units <= lower:
                    break
                upper = units if tier.up_to is None else min(units, tier.up_to)
                total += (upper - lower) * tier.unit_amount + tier.flat_amount
                if tier.up_to is None:
                    break
                lower = tier.up_to
            return total
        if charge.model == "volume":
            if units == 0:
                return Decimal(0)
            tier = next(t for t in charge.tiers if t.up_to is None or units <= t.up_to)
            return units * tier.unit_amount + tier.flat_amount
        if charge.model == "package":
            packages, remainder = divmod(max(units - charge.free_units, Decimal(0)), charge.package_size)
            return (packages + (1 if remainder else 0)) * charge.package_amount
    raise ValueError(f"unknown charge model {charge.model!r}")


def round_minor(amount: Decimal, minor_units: int) -> Decimal:
    """Round half-up (away from zero on a tie) to `minor_units` decimal places."""
    if type(minor_units) is not int or minor_units < 0:
        raise ValueError(f"minor_units must be a non-negative integer, got {minor_units!r}")
    with localcontext(_ROUNDING):
        return amount.quantize(Decimal(1).scaleb(-minor_units))


# --- Spark -----------------------------------------------------------------------------------

def _exact(c: Column) -> Column:
    return c.cast(EXACT)


def _plus(a: Column, b: Column) -> Column:
    # cast after every addition: one more term on a decimal(38,12) would cost scale
    return _exact(a + b)


def _times(quantity: Column, price: Column) -> Column:
    return _exact(quantity.cast(QTY) * price.cast(PRICE))


def _graduated(units: Column, tiers: Column) -> Column:
    init = F.struct(F.lit(0).cast(QTY).alias("lower"), F.lit(0).cast(EXACT).alias("total"))

    def step(acc: Column, tier: Column) -> Column:
        lower = acc["lower"]
        upper = F.coalesce(tier["up_to"].cast(QTY), units)
        in_tier = F.greatest(F.least(units, upper) - lower, F.lit(0)).cast(QTY)
        flat = F.when(units > lower, tier["flat_amount"]).otherwise(F.lit(0))
        total = _plus(_plus(acc["total"], _times(in_tier, tier["unit_amount"])), _exact(flat.cast(PRICE)))
        return F.struct(upper.alias("lower"), total.alias("total"))

    return F.aggregate(tiers, init, step, lambda acc: acc["total"])


def _volume(units: Column, tiers: Column) -> Column:
    # the last tier is unbounded, so a valid catalog always has a match
    tier = F.filter(tiers, lambda t: t["up_to"].isNull() | (units <= t["up_to"]))[0]
    return F.when(units == 0, F.lit(0).cast(EXACT)).otherwise(
        _plus(_times(units, tier["unit_amount"]), _exact(tier["flat_amount"].cast(PRICE))))


def _package(units: Column, size: Column, amount: Column, free_units: Column) -> Column:
    chargeable = F.greatest(units - F.coalesce(free_units, F.lit(0)).cast(QTY), F.lit(0)).cast(QTY)
    # decimal(22,6) / decimal(14,6) keeps 16 decimal places; a quotient just above an
    # integer n exceeds it by at least 1/(size in millionths) > 10^-14, so ceil is exact
    packages = F.ceil(chargeable / size.cast(PRICE)).cast(T.DecimalType(22, 0))
    return _exact(packages * amount.cast(PRICE))


def _check_units_type(df: DataFrame, units_col: str) -> None:
    data_type = df.schema[units_col].dataType
    if isinstance(data_type, T.DecimalType) and data_type.scale <= QTY.scale:
        return
    if isinstance(data_type, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return
    raise TypeError(f"{units_col} must be a decimal with at most {QTY.scale} decimal places "
                    f"(or an integer), got {data_type.simpleString()}")


def with_charge_amount(units_col: str = "billable_units", out: str = "amount_exact"):
    """Attach `out` decimal(38,12): the exact charge for `units_col` under the row's price
    (the prices_frame columns model, unit_amount, tiers, package_size, package_amount,
    free_units). Null when the units are null or the row has no price (model null); a
    negative quantity or an unknown model fails the query rather than bill a wrong amount."""

    def transform(df: DataFrame) -> DataFrame:
        _check_units_type(df, units_col)
        raw = F.col(units_col)
        units = raw.cast(QTY)
        model = F.col("model")
        amount = (
            F.when(raw.isNull() | model.isNull(), F.lit(None).cast(EXACT))
            .when(raw < 0, F.raise_error(F.concat(
                F.lit(f"pricing: negative {units_col} "), raw.cast("string"))).cast(EXACT))
            .when(model == "per_unit", _times(units, F.col("unit_amount")))
            .when(model == "graduated", _graduated(units, F.col("tiers")))
            .when(model == "volume", _volume(units, F.col("tiers")))
            .when(model == "package", _package(units, F.col("package_size"), F.col("package_amount"),
                                               F.col("free_units")))
            .otherwise(F.raise_error(F.concat(F.lit("pricing: unknown charge model "), model)).cast(EXACT))
        )
        return df.withColumn(out, amount.cast(AMOUNT_EXACT))

    return transform


def with_rounded_amount(col: str = "amount_exact", out: str = "amount", minor_units_col: str = "minor_units"):
    """Attach `out` decimal(38,6): `col` rounded half-up (away from zero on a tie) to the
    row's minor-unit digits. F.round rounds decimals half-up but takes a literal scale,
    hence one branch per possible digit count; other digit counts fail the query."""

    def transform(df: DataFrame) -> DataFrame:
        amount, digits = F.col(col), F.col(minor_units_col)
        rounded = F.when(amount.isNull(), F.lit(None).cast(DECIMAL))
        for d in range(MAX_MINOR_UNITS + 1):
            rounded = rounded.when(digits == d, F.round(amount, d).cast(DECIMAL))
        rounded = rounded.otherwise(F.raise_error(F.concat(
            F.lit(f"pricing: {minor_units_col} must be 0 to {MAX_MINOR_UNITS}, got "),
            F.coalesce(digits.cast("string"), F.lit("null")))).cast(DECIMAL))
        return df.withColumn(out, rounded)

    return transform
