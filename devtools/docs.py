"""Renders the event contract table (docs/contracts.md) and the table reference
(docs/tables.md) from schemas/ (`make docs`).

The docs must never drift from the schemas the code runs with; a unit test fails when
the generated blocks are stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from pipelines.core.contract import EventContract, load_contract
from pipelines.core.settings import REPO_ROOT
from pipelines.core.tables import table_specs
from pipelines.ingest.parse import REASONS

DOCS = REPO_ROOT / "docs"
CONTRACTS = DOCS / "contracts.md"
TABLES = DOCS / "tables.md"


def _required(spec) -> str:
    if spec.required:
        return "yes"
    if spec.required_for:
        return ", ".join(sorted(spec.required_for))
    return "no"


def _type(spec) -> str:
    bits = [spec.json_type]
    if spec.min_length is not None or spec.max_length is not None:
        bits.append(f"{spec.min_length or 0}-{spec.max_length or '…'} chars")
    if spec.enum:
        bits.append("one of " + ", ".join(f"`{e}`" for e in spec.enum))
    if spec.const is not None:
        bits.append(f"= {spec.const}")
    if spec.minimum is not None:
        bits.append(f">= {spec.minimum:g}")
    if spec.decimal_scale is not None:
        bits.append(f"<= {spec.decimal_scale} decimals")
    if spec.fmt:
        bits.append(spec.fmt)
    return ", ".join(bits)


def render_contract(contract: EventContract) -> str:
    lines = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for spec in contract.fields:
        lines.append(f"| `{spec.name}` | {_type(spec)} | {_required(spec)} | {spec.description} |")
        for child in spec.children:
            lines.append(f"| `{spec.name}.{child.name}` | {_type(child)} | "
                         f"{'yes' if child.required else 'no'} | {child.description} |")
    lines += ["", "Quarantine reason codes, in the order they are checked: "
              + ", ".join(f"`{r}`" for r in REASONS) + "."]
    return "\n".join(lines)


def render_tables() -> str:
    out = []
    for name, spec in table_specs().items():
        out += [f"## `{name}`", "", spec.comment, ""]
        layout = []
        if spec.partitioned_by:
            layout.append("Partitioned by " + ", ".join(f"`{c}`" for c in spec.partitioned_by) + ".")
        if spec.stats_columns:
            layout.append("File statistics (data skipping) on " + ", ".join(f"`{c}`" for c in spec.stats_columns) + ".")
        if spec.checkpoint_interval is not None:
            layout.append(f"A Delta checkpoint every {spec.checkpoint_interval} commits.")
        if layout:
            out += [" ".join(layout), ""]
        out += ["| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{c.name}` | `{c.type}` | {c.comment} |" for c in spec.columns]
        out.append("")
    return "\n".join(out).rstrip()


def _replace_block(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- BEGIN {name} -->).*?(<!-- END {name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
    return pattern.sub(lambda m: m.group(1) + "\n" + body + "\n" + m.group(2), text)


def render_contracts(text: str) -> str:
    """docs/contracts.md with its CONTRACT block rendered from schemas/events/v1.json."""
    return _replace_block(text, "CONTRACT", render_contract(load_contract(1)))


def render_table_reference(text: str) -> str:
    """docs/tables.md with its TABLES block rendered from schemas/tables.yaml."""
    return _replace_block(text, "TABLES", render_tables())


# Each generated file and the function that renders its blocks.
GENERATED = {CONTRACTS: render_contracts, TABLES: render_table_reference}


def main(argv: list[str] | None = None) -> int:
    for path, render in GENERATED.items():
        path = Path(path)
        path.write_text(render(path.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
