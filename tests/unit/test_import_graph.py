"""The package's import graph, read from the source with `ast`: no circle, every import
points down the tree, and imports sit at the top of their files.

The tree, bottom to top (README, "Layout"):

    core        settings, session, config, contract, tables, Kafka, money, the job context
    ingest      Kafka -> bronze -> silver -> gold
    quality     the suites and their checks
    billing     catalog, periods, pricing, invoice lines, the close, the gate, the export
    rules       plan rules, usage alerts, the notifications outbox
    fraud       fraud rules and flags
    monitoring  stream metrics, SLOs, status
    analyst     the read-only SQL guard, the analyst views, `lakehouse sql`
    wiring.py < runner.py < cli.py < entrypoints.py, and notebook.py: the application

A domain imports core and the domains ALLOWED names for it, never the application
modules; within a domain any import goes as long as no circle forms. Every import counts,
function-local and TYPE_CHECKING ones included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pipelines

PACKAGE = Path(pipelines.__file__).resolve().parent

# Which domains each domain may import (besides itself), and why.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "ingest": {"core"},
    "quality": {"core", "ingest"},               # a dataset recomputes gold's daily totals (ingest.gold)
    "billing": {"core", "ingest", "quality"},    # audit traces Kafka coordinates; the gate runs the suites
    "rules": {"core", "billing"},                # the catalog's plans and the billing periods
    "fraud": {"core", "rules"},                  # a new flag stages a notification (rules.notifications)
    "monitoring": {"core"},
    "analyst": {"core"},
}
# The application, above every domain; each may import those ranked below it.
APPLICATION = {"pipelines.wiring": 1, "pipelines.notebook": 1, "pipelines.runner": 2, "pipelines.cli": 3,
               "pipelines.entrypoints": 4}
# Function-local imports that stay, and why; anything else is imported at the top.
LOCAL_IMPORTS_ALLOWED = {
    ("pipelines.quality.gx_adapter", "great_expectations"):
        "seconds to import; only evaluating an expectation needs it, and every job imports the adapter",
    ("pipelines.monitoring.status", "matplotlib"):
        "only `lakehouse status --plot` draws; the headless backend is chosen before pyplot loads",
    ("pipelines.core.secret_scopes", "pyspark"):
        "pyspark.dbutils exists only on a Databricks Runtime",
}
# An event's way from Kafka bytes to an invoice line, one file each, in the order of the
# architecture picture (README); a file may import those before it, never one after it.
EVENT_PATH = ["ingest/bronze.py", "ingest/parse.py", "ingest/pii_key.py", "ingest/pii.py", "ingest/dedup.py",
              "ingest/silver_plan.py", "ingest/silver.py", "ingest/gold.py", "billing/catalog.py",
              "billing/periods.py", "billing/pricing.py", "billing/invoice.py", "billing/close.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str:
    """The package module a dotted name lives in (a function or class -> its module)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(module: str) -> list[tuple[int, str, bool]]:
    """(line, imported module of the package, function-local?) for every import of `module`."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                assert child.level == 0, f"{module}:{child.lineno}: relative import"
                found.append((child.lineno, child.module, local))
                found.extend((child.lineno, f"{child.module}.{a.name}", local) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for _line, name, _local in imports(module):
            if name == "pipelines" or name.startswith("pipelines."):
                target = resolve(name)
                if target not in (module, "pipelines"):
                    edges[module].add(target)
    return edges


def domain(module: str) -> str:
    """core or the domain a module belongs to (its folder); else the module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else module


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_every_module_is_in_a_domain_or_the_application():
    stray = sorted(m for m in MODULES if m != "pipelines" and domain(m) not in ALLOWED and m not in APPLICATION)
    assert stray == [], f"modules outside the declared tree: {stray}"


def test_the_declared_layering_has_no_circle():
    assert cycle(ALLOWED) is None


def test_the_import_graph_has_no_circle():
    found = cycle(package_edges())
    assert found is None, "import circle: " + " -> ".join(found)


def test_every_import_points_down_the_tree():
    upward = []
    for module, targets in package_edges().items():
        for target in sorted(targets):
            if module in APPLICATION:
                ok = target not in APPLICATION or APPLICATION[target] < APPLICATION[module]
            elif target in APPLICATION or module == "pipelines":
                ok = False
            else:
                ok = domain(target) == domain(module) or domain(target) in ALLOWED[domain(module)]
            if not ok:
                upward.append(f"{module} -> {target}")
    assert upward == [], "imports that point up or sideways:\n" + "\n".join(upward)


def test_imports_sit_at_the_top_of_their_files():
    local = []
    for module in MODULES:
        for line, name, is_local in imports(module):
            if is_local and (module, name.split(".")[0]) not in LOCAL_IMPORTS_ALLOWED:
                local.append(f"{module}:{line}: {name}")
    assert local == [], "function-local imports (move them to the top, or allow one with a reason):\n" + "\n".join(local)


def test_every_allowed_local_import_is_still_needed():
    used = {(module, name.split(".")[0]) for module in MODULES for _l, name, local in imports(module) if local}
    assert set(LOCAL_IMPORTS_ALLOWED) <= used


def test_an_event_visits_each_file_once_in_the_order_of_the_picture():
    order = [module_name(PACKAGE / rel) for rel in EVENT_PATH]
    assert all(m in MODULES for m in order) and len(set(order)) == len(order)
    edges = package_edges()
    later = [f"{a} -> {b}" for i, a in enumerate(order) for b in order[i + 1:] if b in edges[a]]
    assert later == [], "a file on the event's way imports one further along it:\n" + "\n".join(later)
