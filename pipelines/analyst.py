"""The analyst surface: SQL over every table by its logical name, reads only.

Two guards, both before anything runs:

1. Lexical (`check_read_only`, pure): comments are removed and string literals and
   quoted identifiers set aside, so neither can hide or fake a keyword; exactly one
   statement; it starts with a read keyword; and no write or session-changing keyword
   (INSERT, MERGE, CACHE, SET, ADD JAR...) or Java-calling function (reflect) appears
   anywhere in it, which catches `WITH ... INSERT` and `FROM t INSERT ...`.
2. Parsed (`check_plan_read_only`): Spark's own parser turns the statement into a plan,
   and every node of it must be a query operator: no command and no parsed write
   statement, except the listed read commands (SHOW, DESCRIBE, EXPLAIN) at the top.
"""
from __future__ import annotations

import contextlib
import re
from typing import TextIO

from pyspark.sql import SparkSession

from pipelines.settings import Settings
from pipelines.tables import Lake

READ_STARTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE")
# Words that only ever appear in statements that write, change the session or reach the JVM.
FORBIDDEN_WORDS = frozenset({
    "INSERT", "MERGE", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRUNCATE", "OVERWRITE",
    "CACHE", "UNCACHE", "CLEAR", "REFRESH", "SET", "RESET", "ADD", "LIST", "LOAD", "MSCK", "REPAIR",
    "GRANT", "REVOKE", "OPTIMIZE", "VACUUM", "RESTORE", "CLONE", "CONVERT", "COPY", "CALL", "USE",
    "EXECUTE", "DECLARE", "ANALYZE", "REFLECT", "JAVA_METHOD", "TRY_REFLECT",
})
# Read-only commands allowed as the top node of the parsed plan.
READ_COMMANDS = frozenset({
    "ShowTables", "ShowTablesExtended", "ShowViews", "ShowColumns", "ShowFunctions", "ShowPartitions",
    "ShowCreateTable", "ShowTableProperties", "ShowNamespaces", "ShowCatalogsCommand",
    "DescribeRelation", "DescribeColumn", "DescribeFunction", "DescribeNamespace", "ExplainCommand",
})
_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReadOnlyQueryError(ValueError):
    pass


def _code_parts(query: str) -> list[str]:
    """The statement text with comments removed and every literal or quoted identifier
    replaced by a blank; statements separated by `;` come back as separate parts."""
    parts: list[str] = []
    out: list[str] = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if query.startswith("--", i):
            i = query.find("\n", i)
            i = n if i < 0 else i
        elif query.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise ReadOnlyQueryError("unterminated /* comment")
            out.append(" ")
        elif c in ("'", '"', "`"):
            j = i + 1
            while j < n and query[j] != c:
                j += 2 if query[j] == "\\" and c != "`" else 1
            if j >= n:
                raise ReadOnlyQueryError(f"unterminated {c} quote")
            out.append(" ? ")
            i = j + 1
        elif c == ";":
            parts.append("".join(out))
            out = []
            i += 1
        else:
            out.append(c)
            i += 1
    parts.append("".join(out))
    return [p for p in parts if p.strip()]


def check_read_only(query: str) -> str:
    """Analysts read; jobs write. One statement, and it must be a query. Returns the
    statement to run (the query without trailing semicolons)."""
    parts = _code_parts(query)
    if not parts:
        raise ReadOnlyQueryError("empty query")
    if len(parts) > 1:
        raise ReadOnlyQueryError("one statement at a time, please")
    words = [w.upper() for w in _WORD.findall(parts[0])]
    if not words or words[0] not in READ_STARTS:
        raise ReadOnlyQueryError(f"only read queries ({', '.join(READ_STARTS)}) are allowed here")
    if bad := sorted(FORBIDDEN_WORDS.intersection(words)):
        raise ReadOnlyQueryError(f"read queries only: {', '.join(bad)} is not allowed here "
                                 "(a column of that name can be quoted in backticks)")
    return query.strip().rstrip(";").strip()


def check_plan_read_only(spark: SparkSession, statement: str) -> None:
    """Spark's parser decides what the statement is; nothing in it may write.

    Only classic (py4j) sessions expose the parser; elsewhere the lexical check stands alone.
    """
    jsession = getattr(spark, "_jsparkSession", None)
    if jsession is None:
        return
    jvm = spark._jvm
    plan = jsession.sessionState().sqlParser().parsePlan(statement)
    forbidden = [jvm.java.lang.Class.forName(_LOGICAL + name) for name in ("Command", "ParsedStatement")]
    tree = jvm.java.lang.Class.forName("org.apache.spark.sql.catalyst.trees.TreeNode")

    def visit(node, top: bool) -> None:
        name = node.getClass().getSimpleName()
        if any(cls.isAssignableFrom(node.getClass()) for cls in forbidden) and not (top and name in READ_COMMANDS):
            raise ReadOnlyQueryError(f"read queries only: the statement parses to {name}")
        for seq in (node.children(), node.innerChildren()):
            for i in range(seq.size()):
                child = seq.apply(i)
                # innerChildren also holds CTE definitions and subquery plans; skip non-trees.
                if tree.isInstance(child):
                    visit(child, False)

    visit(plan, True)


def run_sql(spark: SparkSession, settings: Settings, query: str, *, limit: int = 50, fmt: str = "table",
            out: TextIO) -> None:
    statement = check_read_only(query)
    check_plan_read_only(spark, statement)
    from pipelines.views import register_views

    lake = Lake(settings)
    lake.register_views(spark)
    register_views(spark, lake)   # analyst.* views (pipelines/conf/views.yaml)
    df = spark.sql(statement)
    if fmt == "table":
        with contextlib.redirect_stdout(out):
            df.show(n=limit, truncate=40)
        return
    rows = df.limit(limit).toPandas() if limit else df.toPandas()
    if fmt == "csv":
        rows.to_csv(out, index=False)
    else:
        rows.to_json(out, orient="records", lines=True, date_format="iso")
