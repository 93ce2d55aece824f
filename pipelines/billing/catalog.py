"""The pricing catalog (pipelines/conf/pricing.yaml): plans, base fees, included quotas
and usage charges, loaded and validated into frozen dataclasses.

Money and quantities are Decimals from decimal strings, never floats. The limits on
digits (6 decimal places, amounts below 10^8, quantities below 10^16) are what lets the
Spark engine (pipelines/billing/pricing.py) price with exact decimal arithmetic: a
quantity times a price always fits Spark's 38 digits without losing scale. The file's
structure, number formats and limits are its JSON Schema, conf/schemas/config/
pricing.schema.json; this module checks what a schema cannot say (references within the
file and to the event contract, uniqueness across plans, tier order, ISO 4217's digits).
Every error names the file and the offending entry; docs/pricing.md explains the format.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from pipelines.core.config import CONF_DIR, ConfigError, check_document, config_decimal, read_yaml
from pipelines.core.contract import load_contract
from pipelines.core.money import minor_unit_digits

DEFAULT_CATALOG = CONF_DIR / "pricing.yaml"

# The schema states these limits (a test keeps the two in step); the Spark engine relies on them.
MODELS = ("per_unit", "graduated", "volume", "package")
MAX_SCALE = 6
MAX_MINOR_UNITS = 4  # ISO 4217 has nothing finer; larger is a typo
MONEY_LIMIT = Decimal(10) ** 8  # unit, flat and package amounts, base fees, package sizes
QUANTITY_LIMIT = Decimal(10) ** 16  # included quotas, tier bounds, free units
_ZERO = Decimal(0)

DECIMAL = T.DecimalType(38, 6)
TIER_TYPE = T.StructType([
    T.StructField("up_to", DECIMAL),
    T.StructField("unit_amount", DECIMAL),
    T.StructField("flat_amount", DECIMAL),
])
# The columns with_charge_amount reads; prices_frame carries them.
CHARGE_FIELDS = [
    T.StructField("model", T.StringType()),
    T.StructField("unit_amount", DECIMAL),
    T.StructField("tiers", T.ArrayType(TIER_TYPE)),
    T.StructField("package_size", DECIMAL),
    T.StructField("package_amount", DECIMAL),
    T.StructField("free_units", DECIMAL),
]


class CatalogError(ConfigError):
    """A pricing catalog that cannot be used (a ConfigError, so a ValueError)."""


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None  # inclusive; None = no upper bound
    unit_amount: Decimal
    flat_amount: Decimal


@dataclass(frozen=True)
class Charge:
    model: str
    unit_amount: Decimal | None = None  # per_unit
    tiers: tuple[Tier, ...] = ()  # graduated, volume
    package_size: Decimal | None = None  # package
    package_amount: Decimal | None = None  # package
    free_units: Decimal = _ZERO  # package


@dataclass(frozen=True)
class MetricPrice:
    metric: str
    product: str
    included: Decimal
    charge: Charge


@dataclass(frozen=True)
class Plan:
    id: str
    rank: int
    currency: str
    base_fee: Decimal
    metrics: dict[str, MetricPrice]


@dataclass(frozen=True)
class Catalog:
    version: int
    effective_from: date
    currencies: dict[str, int]
    plans: tuple[Plan, ...]  # in rank order

    def plan(self, plan_id: str) -> Plan:
        for plan in self.plans:
            if plan.id == plan_id:
                return plan
        raise KeyError(f"plan {plan_id!r} is not in the pricing catalog "
                       f"(plans: {', '.join(p.id for p in self.plans)})")

    def minor_units(self, currency: str) -> int:
        try:
            return self.currencies[currency]
        except KeyError:
            raise KeyError(f"currency {currency!r} is not in the pricing catalog "
                           f"(currencies: {', '.join(self.currencies)})") from None


# --- reading the file ------------------------------------------------------------------------

def load_catalog(path: Path | str | None = None) -> Catalog:
    path = Path(path or DEFAULT_CATALOG)
    return parse_catalog(read_yaml(path, CatalogError), str(path))


def parse_catalog(doc: object, where: str = "pricing catalog") -> Catalog:
    """`doc` checked against conf/schemas/config/pricing.schema.json (keys, types, number
    formats and limits, the keys of each charge model), then built into a Catalog; what a
    schema cannot say is checked here."""
    doc = _json_view(doc)
    check_document(doc, "pricing", where, CatalogError)
    effective_from = _effective_from(doc["effective_from"], f"{where}: effective_from")
    currencies = _currencies(doc["currencies"], f"{where}: currencies")
    products = _products()
    plans = [_plan(raw, f"{where}: plans[{i}]", currencies, products) for i, raw in enumerate(doc["plans"])]
    _check_across_plans(plans, where)
    return Catalog(
        version=doc["version"],
        effective_from=effective_from,
        currencies=currencies,
        plans=tuple(sorted(plans, key=lambda p: p.rank)),
    )


def _json_view(doc: object) -> object:
    """A document built in Python (or by yaml.safe_load, which follows YAML 1.1) may hold
    effective_from as a date or a timestamp; the schema checks its text, as read_yaml and
    an editor read it (a timestamp fails the date pattern)."""
    if isinstance(doc, dict) and isinstance(doc.get("effective_from"), date):
        return {**doc, "effective_from": doc["effective_from"].isoformat()}
    return doc


# --- what the schema cannot say: calendar dates, the ISO 4217 table, references, order -------

def _effective_from(text: str, at: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:  # the pattern lets 2025-02-30 through
        raise CatalogError(f"{at}: {text!r} is not a day of the calendar") from None


def _currencies(raw: dict[str, int], at: str) -> dict[str, int]:
    for code, digits in raw.items():
        if digits != minor_unit_digits(code):
            # The export writes amounts in minor units by ISO 4217; a catalog that rounds to
            # other digits would bill one amount and export another.
            raise CatalogError(f"{at}.{code}: ISO 4217 gives {code} {minor_unit_digits(code)} minor-unit digits "
                               f"(what exports use), got {digits}")
    return dict(raw)


def _tiers(raw: list[dict], at: str) -> tuple[Tier, ...]:
    tiers = tuple(Tier(up_to=None if t["up_to"] is None else config_decimal(t["up_to"]),
                       unit_amount=config_decimal(t.get("unit_amount", 0)),
                       flat_amount=config_decimal(t.get("flat_amount", 0))) for t in raw)
    for j, (previous, tier) in enumerate(zip(tiers, tiers[1:]), start=1):
        if previous.up_to is None:
            raise CatalogError(f"{at}[{j - 1}].up_to: only the last tier may be unbounded (null), "
                               f"but tiers[{j}] follows it")
        if tier.up_to is not None and tier.up_to <= previous.up_to:
            raise CatalogError(f"{at}[{j}].up_to: tiers must be strictly increasing, but {raw[j]['up_to']!r} "
                               f"is not above the previous tier's up_to {previous.up_to}")
    if tiers[-1].up_to is not None:
        raise CatalogError(f"{at}[{len(tiers) - 1}].up_to: the last tier must be unbounded "
                           f"(up_to: null), got {raw[-1]['up_to']!r}")
    return tiers


def _charge(raw: dict, at: str) -> Charge:
    model = raw["model"]
    if model == "per_unit":
        return Charge(model, unit_amount=config_decimal(raw["unit_amount"]))
    if model in ("graduated", "volume"):
        return Charge(model, tiers=_tiers(raw["tiers"], f"{at}.tiers"))
    return Charge(model, package_size=config_decimal(raw["size"]), package_amount=config_decimal(raw["amount"]),
                  free_units=config_decimal(raw.get("free_units", 0)))


def _metric(metric: str, raw: dict, at: str, products: tuple[str, ...]) -> MetricPrice:
    if raw["product"] not in products:
        raise CatalogError(f"{at}.product: must be one of {', '.join(products)} (the event contract's "
                           f"products); got {raw['product']!r}")
    return MetricPrice(metric=metric, product=raw["product"], included=config_decimal(raw["included"]),
                       charge=_charge(raw["charge"], f"{at}.charge"))


def _plan(raw: dict, at: str, currencies: dict[str, int], products: tuple[str, ...]) -> Plan:
    if raw["currency"] not in currencies:
        raise CatalogError(f"{at}.currency: {raw['currency']!r} is not listed under currencies "
                           f"({', '.join(currencies)})")
    return Plan(
        id=raw["id"],
        rank=raw["rank"],
        currency=raw["currency"],
        base_fee=config_decimal(raw["base_fee"]),
        metrics={metric: _metric(metric, price, f"{at}.metrics.{metric}", products)
                 for metric, price in raw["metrics"].items()},
    )


def _products() -> tuple[str, ...]:
    return tuple(load_contract().field("product").enum)


def _check_across_plans(plans: list[Plan], where: str) -> None:
    """Ids and ranks unique, and a metric under one product in every plan."""
    first_by_id: dict[str, int] = {}
    first_by_rank: dict[int, int] = {}
    product_of: dict[str, tuple[str, int]] = {}
    for i, plan in enumerate(plans):
        at = f"{where}: plans[{i}]"
        if plan.id in first_by_id:
            raise CatalogError(f"{at}.id: {plan.id!r} is already the id of plans[{first_by_id[plan.id]}]")
        first_by_id[plan.id] = i
        if plan.rank in first_by_rank:
            j = first_by_rank[plan.rank]
            raise CatalogError(f"{at}.rank: {plan.rank} is already the rank of plans[{j}] ({plans[j].id}); "
                               f"ranks order upgrades and downgrades, so each plan needs its own")
        first_by_rank[plan.rank] = i
        for price in plan.metrics.values():
            product, j = product_of.setdefault(price.metric, (price.product, i))
            if price.product != product:
                raise CatalogError(f"{at}.metrics.{price.metric}.product: {price.product!r}, but plans[{j}] "
                                   f"({plans[j].id}) puts {price.metric} under {product!r}; a metric "
                                   f"belongs to one product")


# --- as Spark frames -------------------------------------------------------------------------

PLANS_SCHEMA = T.StructType([
    T.StructField("plan_id", T.StringType(), False),
    T.StructField("plan_rank", T.IntegerType(), False),
    T.StructField("currency", T.StringType(), False),
    T.StructField("minor_units", T.IntegerType(), False),
    T.StructField("base_fee", DECIMAL, False),
])

PRICES_SCHEMA = T.StructType([
    T.StructField("plan_id", T.StringType(), False),
    T.StructField("metric", T.StringType(), False),
    T.StructField("product", T.StringType(), False),
    T.StructField("included", DECIMAL, False),
    *CHARGE_FIELDS,
    T.StructField("currency", T.StringType(), False),
    T.StructField("minor_units", T.IntegerType(), False),
])


def charge_values(charge: Charge) -> tuple:
    """A Charge as the values of CHARGE_FIELDS; fields of other models are null."""
    tiers = None
    if charge.tiers:
        tiers = [(t.up_to, t.unit_amount, t.flat_amount) for t in charge.tiers]
    return (charge.model, charge.unit_amount, tiers, charge.package_size, charge.package_amount,
            charge.free_units)


def plans_frame(spark: SparkSession, catalog: Catalog) -> DataFrame:
    rows = [(p.id, p.rank, p.currency, catalog.minor_units(p.currency), p.base_fee) for p in catalog.plans]
    return spark.createDataFrame(rows, PLANS_SCHEMA)


def prices_frame(spark: SparkSession, catalog: Catalog) -> DataFrame:
    rows = [
        (plan.id, price.metric, price.product, price.included, *charge_values(price.charge),
         plan.currency, catalog.minor_units(plan.currency))
        for plan in catalog.plans
        for price in plan.metrics.values()
    ]
    return spark.createDataFrame(rows, PRICES_SCHEMA)
