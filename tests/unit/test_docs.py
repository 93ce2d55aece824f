"""The README is a front page and docs/ holds the rest: generated blocks fresh, every link,
path, make target and `python -m` module they name real, dated timings in bench/RESULTS.md."""
import re
from pathlib import Path

import pytest

# The generator's own sources of the reason codes and the table specs, so this test follows
# the package wherever those modules live.
from devtools.docs import CONTRACTS, GENERATED, REASONS, REPO_ROOT, TABLES, table_specs

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
README_BUDGET = 350  # lines: a front page, not a manual
PAGES = [README, *sorted(DOCS.glob("*.md"))]
# Pages that describe what is built; docs/DESIGN.md is the product contract, copied in as is.
OWN_PAGES = [p for p in PAGES if p.name != "DESIGN.md"]
MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"


def _rel(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def _prose(text: str) -> str:
    """The text without fenced code blocks (links and headings in code are not markdown)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+)$", _prose(path.read_text(encoding="utf-8")), re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", list(GENERATED), ids=_rel)
def test_generated_blocks_match_the_schemas(path):
    text = path.read_text(encoding="utf-8")
    assert GENERATED[path](text) == text, f"{_rel(path)} is stale: run `make docs`"


def test_docs_list_every_quarantine_reason_and_table():
    contracts = CONTRACTS.read_text(encoding="utf-8")
    tables = TABLES.read_text(encoding="utf-8")
    for needle in ("`occurred_at_in_future`", "`invalid_utf8`"):
        assert needle in contracts
    for reason in REASONS:
        assert f"`{reason}`" in contracts, reason
    for needle in ("## `silver.quarantine`", "## `gold.daily_usage`"):
        assert needle in tables
    for name in table_specs():
        assert f"\n## `{name}`\n" in tables, name


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= README_BUDGET, f"README.md has {lines} lines; move detail into docs/ (budget {README_BUDGET})"
    for heading in ("## Two commands", "## Architecture", "### Layout", "## Where to read next"):
        assert f"\n{heading}\n" in text, heading
    assert "make demo" in text and "make test" in text
    # every topic page is reachable from the front page
    linked = {Path(link.split("#")[0]).name for link in _links(README) if link.startswith("docs/")}
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name not in linked)
    assert not missing, f"README.md does not link to {missing}"


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_every_relative_link_resolves_inside_the_repository(path):
    bad = []
    for link in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        try:
            resolved.relative_to(REPO_ROOT.resolve())
        except ValueError:
            bad.append(f"{link}: outside the repository")
            continue
        if not resolved.exists():
            bad.append(f"{link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            bad.append(f"{link}: no heading with anchor #{anchor} in {_rel(resolved)}")
    assert not bad, f"{_rel(path)}: " + "; ".join(bad)


def test_nothing_points_at_a_file_outside_the_repository():
    needle = "../" + "shared/"  # the product contract used to live beside the checkout
    roots = ["README.md", "docs", "pipelines", "devtools", "bench", "tests", "scripts", "notebooks",
             "resources", "schemas", "Makefile", "pyproject.toml", "databricks.yml"]
    hits = []
    for root in roots:
        base = REPO_ROOT / root
        for f in ([base] if base.is_file() else base.rglob("*")):
            if f.is_file() and f.suffix not in {".png", ".jar", ".pyc", ".parquet"}:
                try:
                    if needle in f.read_text(encoding="utf-8"):
                        hits.append(_rel(f))
                except (UnicodeDecodeError, OSError):
                    continue
    assert not hits, f"{hits} point outside the repository; the product contract is docs/DESIGN.md"
    assert (DOCS / "DESIGN.md").is_file()


# A path the docs name in backticks, under a folder of the repository, must exist; so must a
# test named as `file.py::test_name`.
_TOP = ("pipelines", "devtools", "bench", "tests", "scripts", "notebooks", "resources", "schemas",
        "dashboards", "jvm", "docs")
_PATH = re.compile(r"`((?:%s)/[\w./-]+)(?:::(\w+))?" % "|".join(_TOP))


@pytest.mark.parametrize("path", OWN_PAGES, ids=_rel)
def test_every_path_and_test_the_docs_name_exists(path):
    bad = []
    for m in _PATH.finditer(path.read_text(encoding="utf-8")):
        name, test = m.group(1).rstrip("."), m.group(2)
        if "<" in name or "*" in name or name.startswith("jvm/target"):  # placeholders; build output
            continue
        target = REPO_ROOT / name
        if not target.exists():
            bad.append(name)
        elif test and not re.search(rf"^\s*(async )?def {test}\(", target.read_text(encoding="utf-8"), re.M):
            bad.append(f"{name}::{test}")
    assert not bad, f"{_rel(path)} names what does not exist: {bad}"


@pytest.mark.parametrize("path", OWN_PAGES, ids=_rel)
def test_every_make_target_and_module_the_docs_name_exists(path):
    text = path.read_text(encoding="utf-8")
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    bad = []
    # `make x` in prose is code in backticks; in a code block it starts a line
    for m in re.finditer(r"(?:`|^)make ((?:[a-z][\w-]*)(?: [a-z][\w-]*)*)", text, re.M):
        for word in m.group(1).split():
            if word in targets:
                continue
            if word == m.group(1).split()[0]:  # the first word after `make` must be a target
                bad.append(f"make {word}")
            break  # later words are prose
    for module in re.findall(r"python -m ((?:devtools|bench)(?:\.\w+)*)", text):
        parts = module.split(".")
        if not ((REPO_ROOT.joinpath(*parts).with_suffix(".py")).is_file()
                or (REPO_ROOT.joinpath(*parts) / "__init__.py").is_file()):
            bad.append(f"python -m {module}")
    commands = set(re.findall(r'add_parser\("(\w+)"', (REPO_ROOT / "devtools" / "cli.py").read_text(encoding="utf-8")))
    for command in re.findall(r"python -m devtools (\w+)", text):
        if command not in commands:
            bad.append(f"python -m devtools {command}")
    assert not bad, f"{_rel(path)} names commands that do not exist: {sorted(set(bad))}"


@pytest.mark.parametrize("path", OWN_PAGES, ids=_rel)
def test_dated_timings_live_in_bench_results_only(path):
    text = path.read_text(encoding="utf-8")
    dated = re.findall(rf"\b\d+ min \d+ s\b|\b\d{{1,2}} (?:{MONTHS})\b|\b(?:{MONTHS}) \d{{1,2}}\b", text)
    assert not dated, f"{_rel(path)} carries dated figures {dated}: they belong in bench/RESULTS.md"
