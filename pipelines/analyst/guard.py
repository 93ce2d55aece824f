"""The guard of the analyst surface (`lakehouse sql`, run by query.py): queries over the
lake's silver, gold and analyst tables and views, and nothing else.

The decision is Spark's analysed plan checked against an allowlist, never the text:

1. Lexical (`check_read_only`, pure): one statement, starting with a read keyword, no
   write/session/JVM word outside literals and comments. A cheap first pass that gives
   friendly errors; it is not the boundary (text can be spelled many ways).
2. Parsed (`check_plan_read_only`): every node is query syntax of a list (analysis itself
   has effects: EXECUTE IMMEDIATE runs its text, a table function may read files to infer a
   schema); commands only the listed SHOW/DESCRIBE/EXPLAIN, at the top; no time travel or
   reader options on a table; table functions only those that compute rows from arguments.
3. Analysed (`check_analysed_plan`), in a session of its own with `runSQLOnFiles` off: every
   plan node is a listed query operator; every relation is a table or view of the
   allowlist (`surface`), resolved by the catalog, so `delta.`/path``, `text.`/etc/x``,
   IDENTIFIER('bronze.events'), backticks and case variants all end in the same check;
   views are checked by name and through their body; every expression is one of Spark's
   own built-ins, never a reflection call (reflect, java_method, try_reflect), an object
   invocation or a user-defined function. Subquery plans inside expressions are walked too.
   Anything that cannot be parsed, analysed or walked is refused, never let through.

The plan that was checked is the plan that runs: no second parse of the text.
"""
from __future__ import annotations

import re
from typing import Iterable

from pyspark.sql import SparkSession

from pipelines.core.settings import split_table_name
from pipelines.core.tables import QUARANTINE, Lake, table_specs

READ_STARTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "VALUES", "TABLE")
# Words that only ever appear in statements that write, change the session or reach the JVM.
FORBIDDEN_WORDS = frozenset({
    "INSERT", "MERGE", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER", "TRUNCATE", "OVERWRITE",
    "CACHE", "UNCACHE", "CLEAR", "REFRESH", "SET", "RESET", "ADD", "LIST", "LOAD", "MSCK", "REPAIR",
    "GRANT", "REVOKE", "OPTIMIZE", "VACUUM", "RESTORE", "CLONE", "CONVERT", "COPY", "CALL", "USE",
    "EXECUTE", "DECLARE", "ANALYZE", "REFLECT", "JAVA_METHOD", "TRY_REFLECT",
})
_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
_ANALYSIS = "org.apache.spark.sql.catalyst.analysis."
_COMMAND = "org.apache.spark.sql.execution.command."
_EXPRESSIONS = "org.apache.spark.sql.catalyst.expressions."

# Read-only commands allowed as the top node of the parsed plan, by class. SHOW TABLE
# EXTENDED is not among them: it prints every matching table's schema and location, bronze's
# included; nor are Delta's DESCRIBE DETAIL/HISTORY.
READ_COMMANDS = frozenset({_LOGICAL + n for n in (
    "ShowTables", "ShowViews", "ShowColumns", "ShowFunctions", "ShowPartitions", "ShowTableProperties",
    "DescribeRelation", "DescribeColumn", "DescribeFunction", "DescribeNamespace",
)} | {_COMMAND + n for n in ("ShowNamespacesCommand", "ShowCatalogsCommand", "ExplainCommand")})
# Of those, the ones that read a table's metadata: their target must be on the surface.
TABLE_COMMANDS = frozenset({_LOGICAL + n for n in (
    "ShowColumns", "ShowPartitions", "ShowTableProperties", "DescribeRelation", "DescribeColumn")})
# What a read command may name (tables, namespaces, functions), unresolved.
COMMAND_ARGUMENTS = frozenset({_ANALYSIS + n for n in (
    "UnresolvedTableOrView", "UnresolvedTable", "UnresolvedNamespace", "CurrentNamespace$",
    "UnresolvedFunctionName", "PlanWithUnresolvedIdentifier",
)})
# Query syntax as the parser produces it. Analysis is not free of effects (EXECUTE IMMEDIATE
# runs its text, a table function may list or read files to infer a schema), so nothing
# else reaches the analyser.
PARSED_QUERY_NODES = frozenset({_LOGICAL + n for n in (
    "Project", "Filter", "Join", "Aggregate", "Window", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail",
    "Union", "Intersect", "Except", "Distinct", "Deduplicate", "SubqueryAlias", "UnresolvedWith",
    "WithWindowDefinition", "Pivot", "Unpivot", "Generate", "LateralJoin", "Sample", "LocalRelation",
    "OneRowRelation", "Range", "UnresolvedHint", "Expand",
)} | {_ANALYSIS + n for n in (
    "UnresolvedRelation", "UnresolvedTableValuedFunction", "UnresolvedTVFAliases", "PlanWithUnresolvedIdentifier",
    "UnresolvedSubqueryColumnAliases", "UnresolvedHaving", "UnresolvedInlineTable",
)} | {_EXPRESSIONS + "PipeOperator"})
# Table-valued functions that only compute rows from their arguments. Others (Delta's
# table_changes, a platform's read_files) read history or files.
TABLE_FUNCTIONS = frozenset({
    "range", "explode", "explode_outer", "inline", "inline_outer", "posexplode", "posexplode_outer", "stack",
    "json_tuple", "variant_explode", "variant_explode_outer",
})

# What the analyst may read: the silver and gold layers and the analyst views, less the
# tables that keep raw personal data (bronze is the raw record; silver.quarantine keeps a
# bad record's raw bytes, which the contract requires). The ops layer is the operators'
# (quality results show failing values).
SURFACE_LAYERS = ("silver", "gold")
RAW_PERSONAL_DATA = frozenset({QUARANTINE})

# Query operators the analysed plan may hold, by class. Anything else (a command, a
# streaming or file relation, an object-level Dataset operator, a platform's own node) is
# refused: this list grows only by deciding that a new operator is safe.
QUERY_NODES = frozenset({_LOGICAL + n for n in (
    "Project", "Filter", "Join", "Aggregate", "Window", "Sort", "GlobalLimit", "LocalLimit", "Offset", "Tail",
    "Union", "Intersect", "Except", "Distinct", "Deduplicate", "SubqueryAlias", "WithCTE", "CTERelationDef",
    "CTERelationRef", "UnionLoop", "UnionLoopRef", "LocalRelation", "OneRowRelation", "Range", "Generate",
    "Expand", "Sample", "ResolvedHint", "Repartition", "RepartitionByExpression", "LateralJoin",
)} | {"org.apache.spark.sql.catalyst.analysis.ResolvedInlineTable"})
_VIEW = _LOGICAL + "View"
_RELATION = "org.apache.spark.sql.execution.datasources.LogicalRelation"
# Built-ins that reach the JVM by name: reflect, java_method and try_reflect all analyse to
# CallMethodViaReflection; the objects package (Invoke, NewInstance, ...) calls arbitrary
# methods. StaticInvoke is allowed only on Spark's own classes (built-ins use it).
_REFLECTION = frozenset({_EXPRESSIONS + "CallMethodViaReflection"})
_OBJECTS = _EXPRESSIONS + "objects."
_SPARK_CLASSES = "org.apache.spark."
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ReadOnlyQueryError(ValueError):
    """The statement is not an analyst read: refused before anything ran."""


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


def surface_tables() -> tuple[str, ...]:
    """Logical names of the tables the analyst surface reads (silver and gold, less raw data)."""
    return tuple(sorted(n for n in table_specs()
                        if split_table_name(n)[0] in SURFACE_LAYERS and n not in RAW_PERSONAL_DATA))


_QUOTED = re.compile(r"`((?:[^`]|``)*)`")


def qualified(sql_name: str) -> tuple[str, ...]:
    """`main`.`billing`.`silver_x` -> ('main', 'billing', 'silver_x'), lower case (the
    catalogs compare names without case)."""
    parts = [p.replace("``", "`") for p in _QUOTED.findall(sql_name)]
    if not parts:
        raise ValueError(f"expected a backticked name, got {sql_name!r}")
    return tuple(p.lower() for p in parts)


def surface(lake: Lake, views: Iterable[str]) -> frozenset[tuple[str, ...]]:
    """Every relation the analyst may read, as the catalog names it: `spark_catalog.layer.table`
    locally (Lake.register_views names each table so), the catalog table in Unity Catalog and
    its view in the analyst schema (views.surface_statements); the analyst views likewise
    (pipelines/analyst/views.py: view_name)."""
    def name(logical: str) -> tuple[str, ...]:
        if catalog_name := lake.table_name(logical):
            return qualified(catalog_name)
        layer, table = split_table_name(logical)
        return ("spark_catalog", layer.lower(), table.lower())

    exposed = [qualified(n) for n in map(lake.settings.analyst_table_name, surface_tables()) if n]
    return frozenset([name(n) for n in (*surface_tables(), *views)] + exposed)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _seq(value) -> list:
    """A Scala Seq as a Python list."""
    return [value.apply(i) for i in range(value.size())]


def _option(value):
    """A Scala Option as Python: its value, or None."""
    return value.get() if value.isDefined() else None


def _table_identifier(ident) -> tuple[str, ...]:
    """A catalyst TableIdentifier -> (catalog, database, table), lower case. A name without a
    database is a temporary view: never on the surface."""
    database = _option(ident.database())
    if database is None:
        return ("<temporary>", ident.table().lower())
    return ((_option(ident.catalog()) or "spark_catalog").lower(), database.lower(), ident.table().lower())


def _walk(jvm, plan):
    """Every plan node and expression of `plan`, subquery plans inside expressions
    included, depth first: (kind, node) with kind 'plan' or 'expr'."""
    logical_plan = jvm.java.lang.Class.forName(_LOGICAL + "LogicalPlan")
    plan_expression = jvm.java.lang.Class.forName(_EXPRESSIONS + "PlanExpression")
    stack = [("plan", plan)]
    while stack:
        kind, node = stack.pop()
        yield kind, node
        if kind == "expr":
            if plan_expression.isInstance(node) and logical_plan.isInstance(node.plan()):
                stack.append(("plan", node.plan()))
            stack.extend(("expr", child) for child in _seq(node.children()))
            continue
        stack.extend(("expr", e) for e in _seq(node.expressions()))
        # innerChildren holds the CTE definitions of a parsed WITH; only plans are walked.
        for seq in (node.children(), node.innerChildren()):
            stack.extend(("plan", child) for child in _seq(seq) if logical_plan.isInstance(child))


def _check_parsed_query(jvm, plan) -> None:
    for kind, node in _walk(jvm, plan):
        if kind != "plan":
            continue
        name = node.getClass().getName()
        if name == _LOGICAL + "RelationTimeTravel":
            raise ReadOnlyQueryError("read queries only: tables are read as they are now (no VERSION/TIMESTAMP AS OF)")
        if name not in PARSED_QUERY_NODES:
            raise ReadOnlyQueryError(f"read queries only: the statement parses to {node.getClass().getSimpleName()}")
        if name == _ANALYSIS + "UnresolvedRelation" and (not node.options().isEmpty() or node.isStreaming()):
            raise ReadOnlyQueryError("read queries only: no reader options or streaming reads on a table")
        if name == _ANALYSIS + "UnresolvedTableValuedFunction":
            parts = _seq(node.name())
            if len(parts) != 1 or parts[0].lower() not in TABLE_FUNCTIONS:
                raise ReadOnlyQueryError(f"not on the analyst surface: table function {'.'.join(parts)}()")


def check_plan_read_only(spark: SparkSession, statement: str):
    """Spark's parser decides what the statement is: query syntax only (or one of the read
    commands at the top), no table at another version or with reader options, no table
    function that reads files. Returns the parsed plan.

    Only classic (py4j) sessions expose the parser; elsewhere the statement is refused, as
    it cannot be inspected.
    """
    jsession = getattr(spark, "_jsparkSession", None)
    if jsession is None:
        raise ReadOnlyQueryError("this session cannot show its query plans (Spark Connect?), so no "
                                 "statement can be checked: refused")
    jvm = spark._jvm
    try:
        plan = jsession.sessionState().sqlParser().parsePlan(statement)
    except Exception as exc:  # noqa: BLE001 - what cannot be parsed cannot be checked
        raise ReadOnlyQueryError(f"refused: the statement cannot be parsed: {_first_line(exc)}") from None
    try:
        top = plan.getClass().getName()
        if top == _COMMAND + "ExplainCommand":
            _check_parsed_query(jvm, plan.logicalPlan())
        elif top in READ_COMMANDS:
            for child in _seq(plan.children()):
                if child.getClass().getName() not in COMMAND_ARGUMENTS:
                    raise ReadOnlyQueryError(f"read queries only: {plan.getClass().getSimpleName()} of "
                                             f"{child.getClass().getSimpleName()}")
        else:
            _check_parsed_query(jvm, plan)
    except ReadOnlyQueryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plan that cannot be inspected is refused, not skipped
        raise ReadOnlyQueryError(f"refused: the statement could not be inspected: {_first_line(exc)}") from None
    return plan


# v1 commands that name their table in a field, not in a child: field per command.
_V1_TABLE_FIELD = {"DescribeTableCommand": "table", "DescribeColumnCommand": "table",
                   "ShowColumnsCommand": "tableName", "ShowPartitionsCommand": "tableName",
                   "ShowTablePropertiesCommand": "table"}


class _Classes:
    """The JVM classes the checks test nodes against, looked up once per check."""

    def __init__(self, jvm):
        def of(name):
            return jvm.java.lang.Class.forName(name)
        self.jvm = jvm
        self.user_defined = of(_EXPRESSIONS + "UserDefinedExpression")
        self.hadoop_fs = of("org.apache.spark.sql.execution.datasources.HadoopFsRelation")


def _check_expression(classes: _Classes, expr) -> None:
    cls = expr.getClass().getName()
    if cls in _REFLECTION:
        raise ReadOnlyQueryError(f"not on the analyst surface: {expr.prettyName()}() calls Java methods by name")
    if classes.user_defined.isInstance(expr) or "Python" in cls:
        raise ReadOnlyQueryError(f"not on the analyst surface: user-defined function {expr.prettyName()}()")
    if cls.startswith(_OBJECTS):
        target = expr.staticObject().getName() if cls == _OBJECTS + "StaticInvoke" else ""
        if not target.startswith(_SPARK_CLASSES):
            raise ReadOnlyQueryError(f"not on the analyst surface: {expr.getClass().getSimpleName()} calls "
                                     f"{target or 'an object method'}")
    elif not cls.startswith(_EXPRESSIONS):
        # Spark's own built-ins only: a platform's or an extension's function is not reviewed here.
        raise ReadOnlyQueryError(f"not on the analyst surface: function {expr.prettyName()}() ({cls})")


def _check_relation(classes: _Classes, node, allowed: frozenset) -> None:
    if node.getClass().getName() == _VIEW:
        ident = _table_identifier(node.desc().identifier())
        if node.isTempView() or ident not in allowed:
            raise ReadOnlyQueryError(f"not on the analyst surface: view {'.'.join(ident)}")
        return   # its body is walked like the rest of the plan
    table = _option(node.catalogTable())
    if table is None:
        # A read by path (delta.`/x`, a file source): no catalog table behind it.
        raise ReadOnlyQueryError("not on the analyst surface: a read by path; name a lake table")
    ident = _table_identifier(table.identifier())
    if ident not in allowed:
        raise ReadOnlyQueryError(f"not on the analyst surface: table {'.'.join(ident)}")
    if not classes.hadoop_fs.isInstance(node.relation()) or node.isStreaming():
        # table_changes() and friends read a table's history, not the table.
        raise ReadOnlyQueryError(f"not on the analyst surface: {'.'.join(ident)} read through "
                                 f"{node.relation().getClass().getSimpleName()}; read the table itself")


def check_analysed_plan(jvm, plan, allowed: frozenset) -> None:
    """Every node of an analysed query plan on the allowlist (see the module docstring)."""
    classes = _Classes(jvm)
    for kind, node in _walk(jvm, plan):
        if kind == "expr":
            _check_expression(classes, node)
            continue
        name = node.getClass().getName()
        if name in (_VIEW, _RELATION):
            _check_relation(classes, node, allowed)
        elif name not in QUERY_NODES:
            raise ReadOnlyQueryError(f"not on the analyst surface: the query holds {node.getClass().getSimpleName()}")


def _command_targets(jvm, plan) -> list[tuple[str, ...]]:
    """The tables or views an analysed SHOW/DESCRIBE command is about."""
    targets = []
    for kind, node in _walk(jvm, plan):
        if kind != "plan":
            continue
        name = node.getClass().getSimpleName()
        if name in ("ResolvedTable", "ResolvedPersistentView"):
            ident = node.identifier()
            targets.append(tuple(p.lower() for p in (node.catalog().name(), *ident.namespace(), ident.name())))
        elif name == "ResolvedTempView":
            targets.append(("<temporary>", ".".join(node.identifier().namespace()), node.identifier().name()))
        elif name in _V1_TABLE_FIELD:
            targets.append(_table_identifier(getattr(node, _V1_TABLE_FIELD[name])()))
    return targets


def _analyse(session: SparkSession, plan):
    """The analysed form of a parsed plan, without running it (a command is not executed)."""
    jvm = session._jvm
    skip = getattr(getattr(jvm.org.apache.spark.sql.execution, "CommandExecutionMode$"), "MODULE$").SKIP()
    try:
        return session._jsparkSession.sessionState().executePlan(plan, skip).analyzed()
    except Exception as exc:  # noqa: BLE001 - any failure to analyse is a refusal, with Spark's reason
        raise ReadOnlyQueryError(f"refused: the query cannot be analysed: {_first_line(exc)}") from None


def analyst_session(spark: SparkSession) -> SparkSession:
    """A session of its own for the analyst's statement: it shares the catalog, not the
    caller's temporary views, functions or settings, and cannot name files as tables."""
    session = spark.newSession()
    session.conf.set("spark.sql.runSQLOnFiles", "false")
    return session


def checked_plan(session: SparkSession, statement: str, allowed: frozenset):
    """Parse, analyse and check `statement` in the analyst `session`; returns the analysed
    plan to run, or raises ReadOnlyQueryError."""
    jvm = session._jvm
    try:
        parsed = check_plan_read_only(session, statement)
        top = parsed.getClass().getName()
        if top == _COMMAND + "ExplainCommand":
            # EXPLAIN plans its query without running it; the query itself must be allowed.
            check_analysed_plan(jvm, _analyse(session, parsed.logicalPlan()), allowed)
            return parsed
        analysed = _analyse(session, parsed)
        if top not in READ_COMMANDS:
            check_analysed_plan(jvm, analysed, allowed)
            return analysed
        if top in TABLE_COMMANDS:
            targets = _command_targets(jvm, analysed)
            refused = [t for t in targets if t not in allowed]
            if not targets or refused:
                what = ".".join(refused[0]) if refused else "its target"
                raise ReadOnlyQueryError(f"not on the analyst surface: {what}")
        return analysed
    except ReadOnlyQueryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plan that cannot be inspected is refused, not skipped
        raise ReadOnlyQueryError(f"refused: the statement could not be inspected: {_first_line(exc)}") from None
