"""Table specs from schemas/tables.yaml and the one mapping from logical names to storage.

Locally a table `layer.table` is a Delta folder `<lake root>/<layer>/<table>`; on
Databricks the same logical name maps to a Unity Catalog table. Jobs only ever say the
logical name.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.core.config import check_document, read_yaml, repeated
from pipelines.core.contract import schemas_dir
from pipelines.core.settings import Settings, split_table_name

log = logging.getLogger(__name__)

# Every table's logical name, once; schemas/tables.yaml holds their columns (a test keeps
# the two in step). Modules import these rather than spelling the names.
BRONZE_EVENTS = "bronze.events"
USAGE_EVENTS = "silver.usage_events"
ACCOUNT_EVENTS = "silver.account_events"
DUPLICATES = "silver.duplicates"
QUARANTINE = "silver.quarantine"
RULE_STATE = "silver.rule_state"
DAILY_USAGE = "gold.daily_usage"
PERIOD_USAGE = "gold.period_usage"
INVOICE_LINES = "gold.invoice_lines"
BILLING_EXPORTS = "gold.billing_exports"
NOTIFICATIONS = "gold.notifications"
PLAN_DECISIONS = "gold.plan_decisions"
PLAN_TIMELINE = "gold.plan_timeline"
FRAUD_FLAGS = "gold.fraud_flags"
SILVER_BATCHES = "ops.silver_batches"
QUALITY_RESULTS = "ops.quality_results"
STREAM_METRICS = "ops.stream_metrics"

# The Kafka coordinates a silver row keeps of the copy it came from: one record, anywhere.
COORDINATES = ["kafka_topic", "kafka_partition", "kafka_offset"]
# Kafka order of copies: the broker's append timestamp, then the coordinates break ties.
KAFKA_ORDER = ["kafka_timestamp", *COORDINATES]


class TableSpecError(ValueError):
    pass


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    comment: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    comment: str
    columns: tuple[ColumnSpec, ...]
    change_data_feed: bool = False
    partitioned_by: tuple[str, ...] = ()
    stats_columns: tuple[str, ...] = ()
    checkpoint_interval: int | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def struct_type(self) -> T.StructType:
        return T.StructType([
            T.StructField(c.name, T._parse_datatype_string(c.type), True, {"comment": c.comment})
            for c in self.columns
        ])

    def table_properties(self) -> dict[str, str]:
        """The Delta table properties the spec asks for (set when the table is created)."""
        props = {"delta.enableChangeDataFeed": "true"} if self.change_data_feed else {}
        if self.stats_columns:
            props["delta.dataSkippingStatsColumns"] = ",".join(self.stats_columns)
        if self.checkpoint_interval is not None:
            props["delta.checkpointInterval"] = str(self.checkpoint_interval)
        return props

    def ddl(self) -> str:
        return ", ".join(f"`{c.name}` {c.type}" for c in self.columns)


def _column(raw: dict) -> ColumnSpec:
    return ColumnSpec(raw["name"], raw["type"], raw.get("comment", ""))


def parse_table_specs(doc: object, where: str = "table specs") -> dict[str, TableSpec]:
    """The table specs of a tables.yaml document. Its structure is conf/schemas/config/
    tables.schema.json; checked here is only what a schema cannot say: that each group a
    table names exists, that no column appears twice in a table (its groups' and its own),
    that the partition columns and the statistics columns are columns of the table, and
    that no statistics column is a partition column."""
    check_document(doc, "tables", where, TableSpecError)
    groups = {name: [_column(c) for c in cols] for name, cols in doc.get("groups", {}).items()}
    specs: dict[str, TableSpec] = {}
    for name, body in doc.get("tables", {}).items():
        at = f"{where}: tables.{name}"
        cols: list[ColumnSpec] = []
        for key in ("groups", "columns", "groups_after"):
            if key == "columns":
                cols += [_column(c) for c in body.get("columns", [])]
                continue
            for i, group in enumerate(body.get(key, [])):
                if group not in groups:
                    raise TableSpecError(f"{at}.{key}[{i}]: unknown column group {group!r}; "
                                         f"known: {sorted(groups)}")
                cols += groups[group]
        names = [c.name for c in cols]
        if dupes := repeated(names):
            raise TableSpecError(f"{at}: duplicated columns {dupes}")
        partitioned_by, stats_columns = (tuple(body.get(key, ())) for key in ("partitioned_by", "stats_columns"))
        for key, listed in (("partitioned_by", partitioned_by), ("stats_columns", stats_columns)):
            if strangers := [c for c in listed if c not in names]:
                raise TableSpecError(f"{at}.{key}: {strangers} are not columns of the table")
        if partitions := [c for c in stats_columns if c in partitioned_by]:
            raise TableSpecError(f"{at}.stats_columns: {partitions} are partition columns (a partition has no "
                                 "file statistics)")
        specs[name] = TableSpec(name, body.get("comment", ""), tuple(cols), body.get("change_data_feed", False),
                                partitioned_by, stats_columns, body.get("checkpoint_interval"))
    return specs


@lru_cache(maxsize=None)
def table_specs() -> dict[str, TableSpec]:
    path = schemas_dir() / "tables.yaml"
    return parse_table_specs(read_yaml(path, TableSpecError), str(path))


def spec(name: str) -> TableSpec:
    try:
        return table_specs()[name]
    except KeyError:
        raise TableSpecError(f"unknown table {name!r}; known: {sorted(table_specs())}") from None


# No stored event is older (the contract's floor for occurred_at, parse.MIN_OCCURRED_AT).
MIN_EVENT_DATE = "2000-01-01"


def filter_touched_partitions(keys: DataFrame, on: list[str]):
    """A table partitioned by event_date -> its rows whose `on` columns match a row of `keys`
    (a small frame holding event_date), reading only the partitions of keys' dates.

    The pruning is Spark's dynamic partition pruning: the broadcast keys become a filter on
    the scan at run time. Spark plans it only when the keys side looks selective, which a
    plain frame of dates does not; a range filter on event_date that every stored event
    passes (none is older than the contract's floor) says so, and changes no result.
    """

    def transform(df: DataFrame) -> DataFrame:
        selective = keys.filter(F.col("event_date") >= F.lit(MIN_EVENT_DATE).cast("date"))
        return df.join(F.broadcast(selective), on=on, how="left_semi")

    return transform


# Tables whose partitioning this process has checked (ensure_partitioned), by reference.
_PARTITIONED: set[str] = set()
_PARTITIONED_LOCK = threading.Lock()


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Lake:
    """Where each logical table lives, and the few IO helpers every job shares.

    The one mapping from logical names to storage: a Delta folder under the lake root by
    default, a Unity Catalog table `<catalog>.<schema>.<layer>_<table>` when the settings
    name a catalog (Databricks). Jobs read and write through these helpers only.
    """

    def __init__(self, settings: Settings):
        self.settings = settings

    def path(self, name: str) -> str:
        return self.settings.table_path(name)

    def table_name(self, name: str) -> str | None:
        """The catalog table name, or None when tables are paths (local)."""
        return self.settings.table_name(name)

    def ref(self, name: str) -> str:
        """What SQL can name the table by: the catalog name, or delta.`<path>`."""
        return self.table_name(name) or f"delta.`{self.path(name)}`"

    def checkpoint(self, job: str, query: str) -> str:
        return self.settings.checkpoint_path(job, query)

    def exists(self, spark: SparkSession, name: str) -> bool:
        if table := self.table_name(name):
            return spark.catalog.tableExists(table.replace("`", ""))
        return DeltaTable.isDeltaTable(spark, self.path(name))

    def ensure(self, spark: SparkSession, name: str, properties: dict[str, str] | None = None) -> None:
        """Create the table from its spec if it does not exist yet (idempotent), with the
        given table properties if it is created here."""
        table = spec(name)
        props = {**table.table_properties(), **(properties or {})}
        if catalog_name := self.table_name(name):
            # SQL, not the builder: the builder's name parser takes `db.table` only, while a
            # catalog table is `catalog.schema.table`.
            columns = ", ".join(f"`{c.name}` {c.type} COMMENT {_sql_string(c.comment)}" for c in table.columns)
            tblproperties = (" TBLPROPERTIES (" + ", ".join(f"{_sql_string(k)} = {_sql_string(v)}" for k, v in props.items())
                             + ")") if props else ""
            partitions = f" PARTITIONED BY ({', '.join(table.partitioned_by)})" if table.partitioned_by else ""
            spark.sql(f"CREATE TABLE IF NOT EXISTS {catalog_name} ({columns}) USING DELTA{partitions} "
                      f"COMMENT {_sql_string(table.comment)}{tblproperties}")
            return
        builder = DeltaTable.createIfNotExists(spark).location(self.path(name)).comment(table.comment)
        for col in table.columns:
            builder = builder.addColumn(col.name, col.type, comment=col.comment)
        for key, value in props.items():
            builder = builder.property(key, value)
        if table.partitioned_by:
            builder = builder.partitionedBy(*table.partitioned_by)
        builder.execute()

    def ensure_partitioned(self, spark: SparkSession, name: str, derived: dict[str, Column] | None = None) -> None:
        """ensure(), and give a table made before its spec's partitioning that layout: once
        per process and table (the check reads the table's metadata).

        The table is rewritten whole in one overwrite commit: every row keeps its values, and
        `derived` computes the columns the old layout lacks from the ones it has. A writer
        committing to the table at that moment fails on the conflict, so only tables whose
        writes are idempotent take this path. A table with a change data feed never does: the
        rewrite would hand every row to its followers again."""
        self.ensure(spark, name)
        table = spec(name)
        ref = self.ref(name)
        with _PARTITIONED_LOCK:
            if ref in _PARTITIONED:
                return
            partitions = list(self.delta(spark, name).detail().select("partitionColumns").first()[0])
            if partitions != list(table.partitioned_by):
                if table.change_data_feed:
                    raise TableSpecError(f"{name} is partitioned by {partitions}, its spec by "
                                         f"{list(table.partitioned_by)}; a table with a change data feed is "
                                         "not rewritten automatically")
                log.warning("%s is partitioned by %s; rewriting it partitioned by %s (once)", name,
                            partitions or "nothing", list(table.partitioned_by))
                rows = self.read(spark, name).withColumns(derived or {}).select(*table.column_names)
                writer = rows.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
                if table.partitioned_by:
                    writer = writer.partitionBy(*table.partitioned_by)
                self.save(writer, name)
            _PARTITIONED.add(ref)

    def read(self, spark: SparkSession, name: str) -> DataFrame:
        if table := self.table_name(name):
            return spark.read.table(table)
        return spark.read.format("delta").load(self.path(name))

    def load(self, reader, name: str) -> DataFrame:
        """A configured Delta reader, batch or stream (`spark.readStream.format("delta")
        .option(...)`) -> the table read through it."""
        if table := self.table_name(name):
            return reader.table(table)
        return reader.load(self.path(name))

    read_stream = load

    def start_stream(self, writer, name: str):
        """A configured Delta `writeStream` -> the query appending to the table."""
        if table := self.table_name(name):
            return writer.toTable(table)
        return writer.start(self.path(name))

    def save(self, writer, name: str) -> None:
        """A configured Delta `DataFrameWriter` -> written to the table."""
        if table := self.table_name(name):
            writer.saveAsTable(table)
        else:
            writer.save(self.path(name))

    def properties(self, spark: SparkSession, name: str) -> dict[str, str]:
        """The table's Delta table properties."""
        return self.delta(spark, name).detail().select("properties").first()[0] or {}

    def set_property(self, spark: SparkSession, name: str, key: str, value: str) -> None:
        target = self.table_name(name) or f"delta.`{self.path(name)}`"
        spark.sql(f"ALTER TABLE {target} SET TBLPROPERTIES ({_sql_string(key)} = {_sql_string(value)})")

    def delta(self, spark: SparkSession, name: str):
        if table := self.table_name(name):
            return DeltaTable.forName(spark, table)
        return DeltaTable.forPath(spark, self.path(name))

    def register_views(self, spark: SparkSession) -> list[str]:
        """Temp views named layer_table plus the `layer`.`table` form via a database per layer,
        so analysts can write `SELECT ... FROM silver.usage_events`. In a catalog the tables
        are already named; nothing to register."""
        registered = []
        for name in table_specs():
            if not self.exists(spark, name):
                continue
            if self.table_name(name):
                registered.append(name)
                continue
            layer, table = split_table_name(name)
            spark.sql(f"CREATE DATABASE IF NOT EXISTS `{layer}`")
            spark.sql(
                f"CREATE TABLE IF NOT EXISTS `{layer}`.`{table}` USING DELTA LOCATION '{self.path(name)}'"
            )
            registered.append(name)
        return registered
