"""Analyst views (pipelines/conf/views.yaml): SQL for the common questions, registered by
`lakehouse sql` and the notebooks over the same logical table names the jobs use."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from pyspark.sql import SparkSession

from pipelines.analyst.guard import ReadOnlyQueryError, check_read_only, surface_tables
from pipelines.core.config import CONF_DIR
from pipelines.core.settings import split_table_name
from pipelines.core.tables import Lake, table_specs
from pipelines.core.tables import _sql_string as _quote

DEFAULT_PATH = CONF_DIR / "views.yaml"
LAYER = "analyst"
_NAME = re.compile(r"^analyst\.[a-z][a-z0-9_]*$")
_COLUMN = re.compile(r"^[a-z][a-z0-9_]*$")
# A logical table name in the SQL: layer.table, not preceded by a dot or a word character.
_TABLE_REF = re.compile(r"(?<![\w.`])([a-z]+)\.([a-z][a-z0-9_]*)\b")


class ViewConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ViewSpec:
    name: str
    comment: str
    columns: tuple[tuple[str, str], ...]   # (column, comment), in the query's output order
    sql: str
    tables: tuple[str, ...]                # logical tables the query reads


def _tables_in(sql: str) -> list[str]:
    known = table_specs()
    return sorted({f"{a}.{b}" for a, b in _TABLE_REF.findall(sql) if f"{a}.{b}" in known})


def parse_views(doc, where: str) -> dict[str, ViewSpec]:
    if not isinstance(doc, dict) or set(doc) != {"version", "views"}:
        raise ViewConfigError(f"{where}: expected exactly the keys version and views")
    if doc["version"] != 1:
        raise ViewConfigError(f"{where}: version: only 1 is known, got {doc['version']!r}")
    if not isinstance(doc["views"], dict) or not doc["views"]:
        raise ViewConfigError(f"{where}: views: expected a non-empty mapping of view name to view")
    known_layers = {split_table_name(t)[0] for t in table_specs()}
    out = {}
    for name, body in doc["views"].items():
        at = f"{where}: views.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ViewConfigError(f"{at}: view names are analyst.<lower_snake_case>")
        if not isinstance(body, dict) or set(body) != {"comment", "columns", "sql"}:
            raise ViewConfigError(f"{at}: expected exactly the keys comment, columns, sql")
        if not isinstance(body["comment"], str) or not body["comment"].strip():
            raise ViewConfigError(f"{at}.comment: say what one row is")
        columns = body["columns"]
        if not isinstance(columns, dict) or not columns:
            raise ViewConfigError(f"{at}.columns: expected a mapping of column name to its meaning")
        for col, text in columns.items():
            if not isinstance(col, str) or not _COLUMN.match(col) or not isinstance(text, str) or not text.strip():
                raise ViewConfigError(f"{at}.columns.{col}: a lower_snake_case name and a non-empty comment")
        if not isinstance(body["sql"], str):
            raise ViewConfigError(f"{at}.sql: expected the query as text")
        try:
            sql = check_read_only(body["sql"])
        except ReadOnlyQueryError as exc:
            raise ViewConfigError(f"{at}.sql: {exc}") from None
        unknown = sorted({f"{a}.{b}" for a, b in _TABLE_REF.findall(sql)
                          if a in known_layers and f"{a}.{b}" not in table_specs()})
        if unknown:
            raise ViewConfigError(f"{at}.sql: unknown tables {unknown}; see schemas/tables.yaml")
        tables = _tables_in(sql)
        if not tables:
            raise ViewConfigError(f"{at}.sql: reads no table of schemas/tables.yaml")
        out[name] = ViewSpec(name, body["comment"].strip(), tuple((c, t.strip()) for c, t in columns.items()),
                             sql, tuple(tables))
    return out


@lru_cache(maxsize=None)
def _load(path: str) -> dict[str, ViewSpec]:
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ViewConfigError(f"{p.name}: cannot read: {exc}") from None
    return parse_views(doc, p.name)


def load_views(path: str | Path | None = None) -> dict[str, ViewSpec]:
    return _load(str(path or DEFAULT_PATH))


def view_name(lake: Lake, name: str) -> str:
    """analyst.x -> `analyst`.`x` locally; in Unity Catalog `<catalog>.<analyst schema>.analyst_x`
    (Settings.table_name), the schema the analyst group is granted."""
    if catalog_name := lake.table_name(name):
        return catalog_name
    layer, view = split_table_name(name)
    return f"`{layer}`.`{view}`"


def render_sql(view: ViewSpec, lake: Lake) -> str:
    """The query with each logical table name replaced by where the lake keeps it."""
    def ref(m: re.Match) -> str:
        name = f"{m.group(1)}.{m.group(2)}"
        if name not in table_specs():
            return m.group(0)
        return lake.table_name(name) or f"`{m.group(1)}`.`{m.group(2)}`"
    return _TABLE_REF.sub(ref, view.sql)


def create_statement(view: ViewSpec, lake: Lake) -> str:
    columns = ", ".join(f"`{c}` COMMENT {_quote(t)}" for c, t in view.columns)
    return (f"CREATE OR REPLACE VIEW {view_name(lake, view.name)} ({columns}) "
            f"COMMENT {_quote(view.comment)} AS {render_sql(view, lake)}")


def surface_statements(lake: Lake, tables) -> list[str]:
    """In Unity Catalog, one view per table of the analyst surface in the analyst schema
    (Settings.analyst_table_name): the analyst group is granted that schema only, and a view
    reads with its owner's rights, so bronze and the quarantine stay out of its reach.
    Locally there is nothing to create: the tables are read by their own names."""
    out = []
    for name in tables:
        if exposed := lake.settings.analyst_table_name(name):
            out.append(f"CREATE OR REPLACE VIEW {exposed} COMMENT {_quote(table_specs()[name].comment)} "
                       f"AS SELECT * FROM {lake.table_name(name)}")
    return out


def register_views(spark: SparkSession, lake: Lake, views: dict[str, ViewSpec] | None = None) -> list[str]:
    """Create every view whose tables exist (after Lake.register_views, which names the
    tables locally); returns the views created. Views over tables not built yet (no
    billing run, say) are skipped, not failed: they appear once the tables do. In a catalog,
    the surface tables' views in the analyst schema too (`surface_statements`)."""
    views = load_views() if views is None else views
    if not lake.table_name(next(iter(views))):
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{LAYER}`")
    for statement in surface_statements(lake, [t for t in surface_tables() if lake.exists(spark, t)]):
        spark.sql(statement)
    created = []
    for view in views.values():
        if all(lake.exists(spark, t) for t in view.tables):
            spark.sql(create_statement(view, lake))
            created.append(view.name)
    return created
