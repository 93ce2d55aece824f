"""The wheel is production only: no module of `pipelines` imports the development tools
(devtools/), the benches, the tests or the scripts, which the wheel does not carry.

Two checks, because either alone can miss a case: every import statement of every module,
function-local and TYPE_CHECKING ones included, read from the source; and every module
imported for real in a fresh interpreter where those top-level names cannot be imported."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pipelines

PACKAGE = Path(pipelines.__file__).resolve().parent
ROOT = PACKAGE.parent
# Everything at the top of the repository that Python could import, less the package.
OUTSIDE = sorted({p.stem if p.suffix == ".py" else p.name for p in ROOT.iterdir()
                  if (p.is_dir() and p.name.isidentifier() and any(p.rglob("*.py"))) or p.suffix == ".py"}
                 - {"pipelines"})


def imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of every import, plus importlib.import_module("...") / __import__("...")."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")))):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_outside_names_include_the_development_tools():
    assert {"devtools", "bench", "tests", "scripts"} <= set(OUTSIDE), OUTSIDE


def test_no_module_of_the_package_imports_anything_outside_it():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, name in imported_names(tree):
            if name.split(".")[0] in OUTSIDE:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert offenders == [], "production imports what the wheel does not ship:\n" + "\n".join(offenders)


BLOCKED_IMPORT = """
import importlib, pkgutil, sys

blocked = set(sys.argv[1].split(","))


class Unshipped:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is not in the wheel")
        return None


sys.meta_path.insert(0, Unshipped())
import pipelines

names = [m.name for m in pkgutil.walk_packages(pipelines.__path__, "pipelines.")]
for name in names:
    importlib.import_module(name)
print(len(names) + 1)  # and pipelines itself
"""


def test_every_module_of_the_package_imports_without_the_development_tools():
    done = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT, ",".join(OUTSIDE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == len(list(PACKAGE.rglob("*.py")))
