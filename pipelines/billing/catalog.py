"""The pricing catalog (pipelines/conf/pricing.yaml): plans, base fees, included quotas
and usage charges, loaded and validated into frozen dataclasses.

Money and quantities are Decimals from decimal strings, never floats. The limits on
digits (6 decimal places, amounts below 10^8, quantities below 10^16) are what lets the
Spark engine (pipelines/billing/pricing.py) price with exact decimal arithmetic: a
quantity times a price always fits Spark's 38 digits without losing scale. Every error
names the file and the offending entry; the format is documented in docs/pricing.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from pipelines.core.config import CONF_DIR
from pipelines.core.contract import load_contract
from pipelines.core.money import minor_unit_digits

DEFAULT_CATALOG = CONF_DIR / "pricing.yaml"

MODELS = ("per_unit", "graduated", "volume", "package")
MAX_SCALE = 6
MAX_MINOR_UNITS = 4  # ISO 4217 has nothing finer; larger is a typo
MONEY_LIMIT = Decimal(10) ** 8  # unit, flat and package amounts, base fees, package sizes
QUANTITY_LIMIT = Decimal(10) ** 16  # included quotas, tier bounds, free units

_TOP_KEYS = {"version", "effective_from", "currencies", "plans"}
_PLAN_KEYS = {"id", "rank", "currency", "base_fee", "metrics"}
_METRIC_KEYS = {"product", "included", "charge"}
_CHARGE_KEYS = {
    "per_unit": {"model", "unit_amount"},
    "graduated": {"model", "tiers"},
    "volume": {"model", "tiers"},
    "package": {"model", "size", "amount", "free_units"},
}
_TIER_KEYS = {"up_to", "unit_amount", "flat_amount"}
_DECIMAL_TEXT = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")
_CURRENCY_CODE = re.compile(r"^[A-Z]{3}$")
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


class CatalogError(ValueError):
    pass


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

class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a repeated key is an error: plain YAML keeps the last one
    silently, which would let a second `pro:` or `unit_amount:` shadow the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from None


def load_catalog(path: Path | str | None = None) -> Catalog:
    path = Path(path or DEFAULT_CATALOG)
    return parse_catalog(_read_yaml(path), str(path))


# --- validation ------------------------------------------------------------------------------

def _check_keys(raw: dict, allowed: set[str], at: str) -> None:
    if unknown := set(raw) - allowed:
        raise CatalogError(f"{at}: unknown keys {sorted(map(str, unknown))} (allowed: {sorted(allowed)})")


def _mapping(raw: object, at: str) -> dict:
    if not isinstance(raw, dict):
        raise CatalogError(f"{at}: expected a mapping, got {raw!r}")
    return raw


def _required(raw: dict, key: str, at: str) -> object:
    if key not in raw:
        raise CatalogError(f"{at}: '{key}' is required")
    return raw[key]


def _decimal(value: object, at: str, *, limit: Decimal, positive: bool = False) -> Decimal:
    """A decimal string (or a YAML integer, which is exact); never a YAML float."""
    if isinstance(value, float):
        raise CatalogError(f"{at}: write amounts as strings, e.g. \"{value}\" in quotes; "
                           f"the YAML float {value!r} is binary and inexact")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CatalogError(f"{at}: expected a decimal string like \"0.40\", got {value!r}")
    text = str(value)
    if not _DECIMAL_TEXT.match(text):
        raise CatalogError(f"{at}: expected a decimal string like \"0.40\", got {value!r}")
    number = Decimal(text)
    if number < 0:
        raise CatalogError(f"{at}: must not be negative, got {value!r}")
    if positive and number == 0:
        raise CatalogError(f"{at}: must be greater than 0, got {value!r}")
    if -number.as_tuple().exponent > MAX_SCALE:
        raise CatalogError(f"{at}: at most {MAX_SCALE} decimal places, got {value!r}")
    if number >= limit:
        raise CatalogError(f"{at}: must be less than {limit:,}, got {value!r}")
    return number


def _money(value: object, at: str, *, positive: bool = False) -> Decimal:
    return _decimal(value, at, limit=MONEY_LIMIT, positive=positive)


def _quantity(value: object, at: str, *, positive: bool = False) -> Decimal:
    return _decimal(value, at, limit=QUANTITY_LIMIT, positive=positive)


def _name(value: object, at: str) -> str:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise CatalogError(f"{at}: expected a non-empty string without surrounding spaces, got {value!r}")
    return value


def _effective_from(value: object, at: str) -> date:
    if isinstance(value, datetime):
        raise CatalogError(f"{at}: expected a date (YYYY-MM-DD), got the timestamp {value.isoformat()!r}")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise CatalogError(f"{at}: expected a date (YYYY-MM-DD), got {value!r}")


def _currencies(raw: object, at: str) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise CatalogError(f"{at}: expected a non-empty mapping of ISO 4217 code to minor-unit digits, "
                           f"e.g. {{USD: 2}}, got {raw!r}")
    out: dict[str, int] = {}
    for code, digits in raw.items():
        if not isinstance(code, str) or not _CURRENCY_CODE.match(code):
            raise CatalogError(f"{at}: {code!r}: a currency is a 3-letter upper-case ISO 4217 code")
        if type(digits) is not int or not 0 <= digits <= MAX_MINOR_UNITS:
            raise CatalogError(f"{at}.{code}: minor-unit digits must be an integer from 0 to "
                               f"{MAX_MINOR_UNITS}, got {digits!r}")
        if digits != minor_unit_digits(code):
            # The export writes amounts in minor units by ISO 4217; a catalog that rounds to
            # other digits would bill one amount and export another.
            raise CatalogError(f"{at}.{code}: ISO 4217 gives {code} {minor_unit_digits(code)} minor-unit digits "
                               f"(what exports use), got {digits}")
        out[code] = digits
    return out


def _tiers(raw: object, at: str) -> tuple[Tier, ...]:
    if not isinstance(raw, list) or not raw:
        raise CatalogError(f"{at}: expected a non-empty list of tiers, got {raw!r}")
    tiers: list[Tier] = []
    for j, raw_tier in enumerate(raw):
        tat = f"{at}[{j}]"
        raw_tier = _mapping(raw_tier, tat)
        _check_keys(raw_tier, _TIER_KEYS, tat)
        up_to = _required(raw_tier, "up_to", tat)
        if "unit_amount" not in raw_tier and "flat_amount" not in raw_tier:
            raise CatalogError(f"{tat}: give unit_amount, flat_amount or both")
        tier = Tier(
            up_to=None if up_to is None else _quantity(up_to, f"{tat}.up_to", positive=True),
            unit_amount=_money(raw_tier.get("unit_amount", "0"), f"{tat}.unit_amount"),
            flat_amount=_money(raw_tier.get("flat_amount", "0"), f"{tat}.flat_amount"),
        )
        if tiers:
            previous = tiers[-1].up_to
            if previous is None:
                raise CatalogError(f"{at}[{j - 1}].up_to: only the last tier may be unbounded (null), "
                                   f"but tiers[{j}] follows it")
            if tier.up_to is not None and tier.up_to <= previous:
                raise CatalogError(f"{tat}.up_to: tiers must be strictly increasing, but {up_to!r} "
                                   f"is not above the previous tier's up_to {previous}")
        tiers.append(tier)
    if tiers[-1].up_to is not None:
        raise CatalogError(f"{at}[{len(tiers) - 1}].up_to: the last tier must be unbounded "
                           f"(up_to: null), got {raw[-1]['up_to']!r}")
    return tuple(tiers)


def _charge(raw: object, at: str) -> Charge:
    raw = _mapping(raw, at)
    model = _required(raw, "model", at)
    if model not in MODELS:
        raise CatalogError(f"{at}.model: must be one of {', '.join(MODELS)}; got {model!r}")
    _check_keys(raw, _CHARGE_KEYS[model], f"{at} ({model})")
    if model == "per_unit":
        return Charge(model, unit_amount=_money(_required(raw, "unit_amount", at), f"{at}.unit_amount"))
    if model in ("graduated", "volume"):
        return Charge(model, tiers=_tiers(_required(raw, "tiers", at), f"{at}.tiers"))
    return Charge(
        model,
        package_size=_money(_required(raw, "size", at), f"{at}.size", positive=True),
        package_amount=_money(_required(raw, "amount", at), f"{at}.amount"),
        free_units=_quantity(raw.get("free_units", "0"), f"{at}.free_units"),
    )


def _metric(metric: str, raw: object, at: str, products: tuple[str, ...]) -> MetricPrice:
    raw = _mapping(raw, at)
    _check_keys(raw, _METRIC_KEYS, at)
    product = _required(raw, "product", at)
    if product not in products:
        raise CatalogError(f"{at}.product: must be one of {', '.join(products)} (the event contract's "
                           f"products); got {product!r}")
    return MetricPrice(
        metric=metric,
        product=product,
        included=_quantity(_required(raw, "included", at), f"{at}.included"),
        charge=_charge(_required(raw, "charge", at), f"{at}.charge"),
    )


def _plan(raw: object, at: str, currencies: dict[str, int], products: tuple[str, ...]) -> Plan:
    raw = _mapping(raw, at)
    plan_id = _name(_required(raw, "id", at), f"{at}.id")
    at = f"{at} ({plan_id})"
    _check_keys(raw, _PLAN_KEYS, at)
    rank = _required(raw, "rank", at)
    if type(rank) is not int or rank < 1:
        raise CatalogError(f"{at}.rank: expected a positive integer, got {rank!r}")
    currency = _required(raw, "currency", at)
    if currency not in currencies:
        raise CatalogError(f"{at}.currency: {currency!r} is not listed under currencies "
                           f"({', '.join(currencies)})")
    raw_metrics = _required(raw, "metrics", at)
    if not isinstance(raw_metrics, dict) or not raw_metrics:
        raise CatalogError(f"{at}.metrics: expected a non-empty mapping of metric to price, got {raw_metrics!r}")
    metrics = {}
    for metric, raw_price in raw_metrics.items():
        metric = _name(metric, f"{at}.metrics: metric name")
        metrics[metric] = _metric(metric, raw_price, f"{at}.metrics.{metric}", products)
    return Plan(
        id=plan_id,
        rank=rank,
        currency=currency,
        base_fee=_money(_required(raw, "base_fee", at), f"{at}.base_fee"),
        metrics=metrics,
    )


def _products() -> tuple[str, ...]:
    return tuple(load_contract().field("product").enum)


def parse_catalog(doc: dict, where: str = "pricing catalog") -> Catalog:
    if not isinstance(doc, dict):
        raise CatalogError(f"{where}: expected a mapping at the top level")
    _check_keys(doc, _TOP_KEYS, where)
    version = _required(doc, "version", where)
    if type(version) is not int or version < 1:
        raise CatalogError(f"{where}: version must be a positive integer, got {version!r}")
    effective_from = _effective_from(_required(doc, "effective_from", where), f"{where}: effective_from")
    currencies = _currencies(_required(doc, "currencies", where), f"{where}: currencies")
    raw_plans = _required(doc, "plans", where)
    if not isinstance(raw_plans, list) or not raw_plans:
        raise CatalogError(f"{where}: plans: expected a non-empty list of plans, got {raw_plans!r}")
    products = _products()
    plans = [_plan(raw, f"{where}: plans[{i}]", currencies, products) for i, raw in enumerate(raw_plans)]

    first_by_id: dict[str, int] = {}
    first_by_rank: dict[int, int] = {}
    product_of: dict[str, tuple[str, int]] = {}
    for i, plan in enumerate(plans):
        at = f"{where}: plans[{i}] ({plan.id})"
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
    return Catalog(
        version=version,
        effective_from=effective_from,
        currencies=currencies,
        plans=tuple(sorted(plans, key=lambda p: p.rank)),
    )


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
