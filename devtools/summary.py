"""A readable account of what the lake holds and where every record went.

This is a presentation edge: it reads small aggregates back to the driver to print them.
"""
from __future__ import annotations

from collections import Counter

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.billing.invoice import line_totals
from pipelines.runner import ProgressReporter
from pipelines.core.tables import Lake, table_specs


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  " + "  ".join(c.rjust(w) if n and c.replace(",", "").replace(".", "").isdigit() else c.ljust(w)
                                      for c, w in zip(r, widths)))
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_summary(spark: SparkSession, lake: Lake, reporter: ProgressReporter | None = None,
                   sent_kinds: Counter | None = None) -> str:
    out: list[str] = []
    counts = []
    for name in table_specs():
        if lake.exists(spark, name):
            counts.append([name, lake.read(spark, name).count()])
    out += ["", "Rows per table", _table(["table", "rows"], counts)]

    batches = lake.read(spark, "ops.silver_batches")
    quarantined = (batches.select(F.explode("quarantined").alias("reason", "n"))
                   .groupBy("reason").agg(F.sum("n").alias("n")).orderBy(F.desc("n")).collect())
    hot = reporter.totals["silver"].dropped_duplicates if reporter else 0
    guard = batches.agg(F.coalesce(F.sum("identity_duplicates"), F.lit(0))).first()[0]
    by_rule = (lake.read(spark, "silver.duplicates").filter(F.col("rule") != "identity")
               .groupBy("rule").count().orderBy("rule").collect())
    conflicting = lake.read(spark, "silver.duplicates").filter(F.col("rule") == "identity").count()
    dedup_rows = [["identity, hot path (dropDuplicatesWithinWatermark)", hot],
                  ["identity, history guard / same batch", guard],
                  ["  of which conflicting copies kept in silver.duplicates", conflicting]]
    dedup_rows += [[f"rule {r['rule']}", r["count"]] for r in by_rule]
    out += ["", "Duplicates removed", _table(["by", "records"], dedup_rows)]
    out += ["", "Quarantined by reason", _table(["reason", "records"], [[r["reason"], r["n"]] for r in quarantined])
            if quarantined else "  none"]
    late = batches.agg(F.coalesce(F.sum("late_events"), F.lit(0))).first()[0]
    out += ["", f"Late events kept (occurred_at > late threshold behind ingestion): {late:,}"]

    top = (lake.read(spark, "gold.daily_usage").groupBy("account_id", "product", "metric")
           .agg(F.sum("quantity").alias("quantity"), F.sum("event_count").alias("events"))
           .orderBy(F.desc("events")).limit(10).collect())
    out += ["", "Top accounts by usage (gold.daily_usage)",
            _table(["account", "product", "metric", "quantity", "events"],
                   [[r["account_id"], r["product"], r["metric"], format(r["quantity"].normalize(), 'f'), r["events"]] for r in top])]
    if lake.exists(spark, "gold.invoice_lines"):
        billed = lake.read(spark, "gold.invoice_lines").transform(line_totals).collect()
        exported = ({r["period"]: r["n"] for r in lake.read(spark, "gold.billing_exports")
                     .filter(F.col("state") == "delivered").groupBy("period").agg(F.count(F.lit(1)).alias("n")).collect()}
                    if lake.exists(spark, "gold.billing_exports") else {})
        out += ["", "Invoice lines (gold.invoice_lines) and exported lines (gold.billing_exports)",
                _table(["period", "status", "lines", "amount", "currency", "exported"],
                       [[r["period"], r["status"], r["lines"], str(r["amount"]), r["currency"],
                         exported.get(r["period"], 0) if r["status"] == "final" else "-"] for r in billed])]
    if sent_kinds:
        out += ["", "What the producer sent", _table(["kind", "records"], [[k, v] for k, v in sorted(sent_kinds.items())])]
    return "\n".join(out)
