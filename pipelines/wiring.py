"""The one wiring point: every job, named once, with its kind, the call that runs it and
the console script that deploys it.

`lakehouse run <job>` (cli.py), the runner (runner.py) and the bundle's entry points
(entrypoints.py, pyproject.toml's [project.scripts], resources/*.yml) all read JOBS;
tests/unit/test_bundle.py checks the scripts and the bundle's tasks against it.

A stream's call starts its query and returns it; a batch job's call runs once over the
current tables and returns its result (the runner prints what it says). The batch calls
below are the only glue between the run options and each job's own arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyspark.sql import SparkSession

from pipelines.analyst.views import register_views
from pipelines.billing.close import run_billing
from pipelines.billing.export import run_export
from pipelines.core.context import JobContext
from pipelines.fraud.flags import run_fraud_job
from pipelines.ingest import bronze, gold, silver
from pipelines.quality.run import run_quality_job
from pipelines.rules import notify
from pipelines.rules.plan_rules import run_plan_rules

STREAM, BATCH = "stream", "batch"
Say = Callable[[str], None]


def _billing(spark: SparkSession, ctx: JobContext, say: Say):
    return run_billing(spark, ctx, period=ctx.run.period, catalog_path=ctx.run.catalog, log=say)


def _export(spark: SparkSession, ctx: JobContext, say: Say):
    exports_dir = ctx.run.exports_dir or ctx.settings.lake_root_abs / "exports"
    result = run_export(spark, ctx.lake, exports_dir=exports_dir, period=ctx.run.period)
    say(result.render())
    return result


def _plan_rules(spark: SparkSession, ctx: JobContext, say: Say):
    return run_plan_rules(spark, ctx, rules_path=ctx.run.plan_rules, catalog_path=ctx.run.catalog,
                          dry_run=ctx.run.dry_run, log=say)


def _quality(spark: SparkSession, ctx: JobContext, say: Say):
    return run_quality_job(spark, ctx.lake, say)


def _fraud(spark: SparkSession, ctx: JobContext, say: Say):
    return run_fraud_job(spark, ctx.lake, say)


def _views(spark: SparkSession, ctx: JobContext, say: Say):
    """The analyst surface: in Unity Catalog the views of views.yaml and one view per surface
    table, created in the analyst schema the analyst group is granted (the bundle runs this
    after each close); locally the same statements, in the session's own catalog."""
    tables = ctx.lake.register_views(spark)
    created = register_views(spark, ctx.lake)
    say(f"views: {len(created)} analyst view(s) over {len(tables)} table(s): {', '.join(created) or 'none yet'}")
    return created


@dataclass(frozen=True)
class Job:
    name: str
    kind: str          # STREAM or BATCH
    run: Callable      # STREAM: (spark, ctx) -> StreamingQuery; BATCH: (spark, ctx, say) -> result
    script: str        # the console script (bundle entry point) that runs it
    help: str


# In the order of the architecture picture; a script runs its jobs in this order.
JOBS: dict[str, Job] = {job.name: job for job in (
    Job("bronze", STREAM, bronze.start, "lakehouse-ingest", "Kafka -> bronze.events"),
    Job("silver", STREAM, silver.start, "lakehouse-ingest", "bronze -> silver (parse, PII, dedup, quarantine)"),
    Job("gold", STREAM, gold.start, "lakehouse-ingest", "silver -> gold.daily_usage"),
    Job("notify", STREAM, notify.start, "lakehouse-notify", "usage alerts, reactive notifications"),
    Job("billing", BATCH, _billing, "lakehouse-billing", "period close: invoice lines"),
    Job("quality", BATCH, _quality, "lakehouse-quality", "the quality suites (pipelines/conf/quality)"),
    Job("export", BATCH, _export, "lakehouse-export", "gated exactly-once export: files + ledger"),
    Job("plan-rules", BATCH, _plan_rules, "lakehouse-plan-rules",
        "auto-upgrade/downgrade decisions, plan.changed events"),
    Job("fraud", BATCH, _fraud, "lakehouse-fraud", "gold.fraud_flags"),
    Job("views", BATCH, _views, "lakehouse-views", "the analyst views"),
)}


def streams() -> dict[str, Callable]:
    """Stream name -> its start call."""
    return {name: job.run for name, job in JOBS.items() if job.kind == STREAM}


def batches() -> dict[str, Callable]:
    """Batch job name -> its call."""
    return {name: job.run for name, job in JOBS.items() if job.kind == BATCH}


def entry_points() -> dict[str, tuple[str, ...]]:
    """Console script -> the jobs it runs, in order."""
    scripts: dict[str, tuple[str, ...]] = {}
    for job in JOBS.values():
        scripts[job.script] = (*scripts.get(job.script, ()), job.name)
    return scripts
