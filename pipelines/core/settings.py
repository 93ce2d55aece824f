"""Runtime settings: one place that knows where things are.

Values come from (highest first) explicit CLI flags, environment variables, defaults.
Nothing here touches Spark or Kafka; it only names locations.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

# The repository root when running from a checkout (editable install); on Databricks the
# package is a wheel and the repo-relative folders do not exist.
REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_EVENTS_TOPIC = "billing.events"
DEFAULT_NOTIFICATIONS_TOPIC = "billing.notifications"


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value else default


def env_flag(name: str, default: bool) -> bool:
    """A yes/no switch from the environment: true/1/yes/on or false/0/no/off, any case;
    unset or anything else gives `default`."""
    value = os.environ.get(name, "").lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    return default


@dataclass(frozen=True)
class Settings:
    lake_root: Path = field(default_factory=lambda: Path(_env("LAKEHOUSE_ROOT", "./lakehouse")))
    bootstrap_servers: str = field(
        default_factory=lambda: _env("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
    )
    events_topic: str = field(default_factory=lambda: _env("LAKEHOUSE_EVENTS_TOPIC", DEFAULT_EVENTS_TOPIC))
    notifications_topic: str = field(
        default_factory=lambda: _env("LAKEHOUSE_NOTIFICATIONS_TOPIC", DEFAULT_NOTIFICATIONS_TOPIC)
    )
    # Folder for local-only state that is not lake data: broker logs/data, pid files.
    local_dir: Path = field(default_factory=lambda: Path(_env("LAKEHOUSE_LOCAL_DIR", str(REPO_ROOT / ".local"))))
    # Unity Catalog (Databricks): when a catalog is set, `layer.table` is the managed table
    # `<catalog>.<schema>.<layer>_<table>` instead of a folder under the lake root (which
    # then only holds checkpoints and export files, e.g. a UC volume).
    catalog: str | None = field(default_factory=lambda: os.environ.get("LAKEHOUSE_CATALOG") or None)
    schema: str = field(default_factory=lambda: _env("LAKEHOUSE_SCHEMA", "billing"))
    # Unity Catalog: the schema the analyst group may read (databricks.yml grants SELECT on it
    # and nothing on `schema`): the analyst views and one view per table of the analyst
    # surface. Defaults to `<schema>_analyst`.
    analyst_schema: str | None = field(default_factory=lambda: os.environ.get("LAKEHOUSE_ANALYST_SCHEMA") or None)

    def with_overrides(self, **kwargs) -> "Settings":
        clean = {k: v for k, v in kwargs.items() if v is not None}
        if "lake_root" in clean:
            clean["lake_root"] = Path(clean["lake_root"])
        return replace(self, **clean)

    @property
    def lake_root_abs(self) -> Path:
        return self.lake_root.expanduser().resolve()

    def table_path(self, logical_name: str) -> str:
        """`silver.usage_events` -> `<lake root>/silver/usage_events`."""
        layer, table = split_table_name(logical_name)
        return str(self.lake_root_abs / layer / table)

    def table_name(self, logical_name: str) -> str | None:
        """`silver.usage_events` -> `<catalog>.<schema>.silver_usage_events` when a catalog is
        configured, else None (the table is a path). The layer stays in the name so two
        layers may hold tables of the same name without clashing in one schema."""
        layer, table = split_table_name(logical_name)
        if not self.catalog:
            return None
        # Analyst views live in the analyst schema, the one the analyst group is granted.
        schema = self.analyst_schema_name if layer == "analyst" else self.schema
        return f"`{self.catalog}`.`{schema}`.`{layer}_{table}`"

    @property
    def analyst_schema_name(self) -> str:
        return self.analyst_schema or f"{self.schema}_analyst"

    def analyst_table_name(self, logical_name: str) -> str | None:
        """In a catalog, the view through which analysts read a table of the analyst surface,
        `<catalog>.<analyst schema>.<layer>_<table>`; None locally (the table itself is read)."""
        layer, table = split_table_name(logical_name)
        if not self.catalog:
            return None
        return f"`{self.catalog}`.`{self.analyst_schema_name}`.`{layer}_{table}`"

    def checkpoint_path(self, job: str, query: str) -> str:
        """Checkpoints live beside the tables, one folder per job and query."""
        return str(self.lake_root_abs / "_checkpoints" / job / query)


def split_table_name(logical_name: str) -> tuple[str, str]:
    parts = logical_name.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"table names are 'layer.table', got {logical_name!r}")
    return parts[0], parts[1]


def spark_jars_dir() -> Path:
    return Path(_env("LAKEHOUSE_SPARK_JARS", str(REPO_ROOT / "jvm" / "target" / "spark-jars")))


def kafka_jars_dir() -> Path:
    return Path(_env("LAKEHOUSE_KAFKA_JARS", str(REPO_ROOT / "jvm" / "target" / "kafka-jars")))
