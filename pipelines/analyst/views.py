"""Analyst views (pipelines/conf/views.yaml): SQL for the common questions, registered by
`lakehouse sql` and the notebooks over the same logical table names the jobs use. The
file's format is conf/schemas/config/views.schema.json; each query passes the analyst
guard's read-only check on load."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pyspark.sql import SparkSession

from pipelines.analyst.guard import ReadOnlyQueryError, check_read_only, surface_tables
from pipelines.core.config import CONF_DIR, check_document, read_yaml
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
    """The views of a views.yaml document. Its structure is conf/schemas/config/views.schema.json;
    checked here is what a schema cannot say: each query is one read-only statement (the
    analyst guard's lexical check) reading known tables, at least one."""
    check_document(doc, "views", where, ViewConfigError)
    known_layers = {split_table_name(t)[0] for t in table_specs()}
    out = {}
    for name, body in doc["views"].items():
        at = f"{where}: views.{name}"
        # Defence in depth: view and column names are written into CREATE VIEW statements
        # (view_name, create_statement), so they are checked here too, whole-string (a
        # trailing newline is refused), whatever the schema file or a validator's regex
        # dialect says. The schema says the same; this keeps the guard from resting on it.
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ViewConfigError(f"{at}: view names are analyst.<lower_snake_case>")
        columns = body["columns"]
        for col in columns:
            if not isinstance(col, str) or not _COLUMN.fullmatch(col):
                raise ViewConfigError(f"{at}.columns.{col}: column names are lower_snake_case")
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
        doc = read_yaml(p, ViewConfigError)
    except OSError as exc:
        raise ViewConfigError(f"{p}: cannot read: {exc}") from None
    return parse_views(doc, str(p))


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
