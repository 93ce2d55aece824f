"""`lakehouse`: the one command-line entry point. Thin: parse, build the session, call in."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines.analyst.query import run_sql
from pipelines.billing.periods import parse_period
from pipelines.core.context import JobContext, RunOptions
from pipelines.core.session import build_spark
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake
from pipelines.fraud.flags import clear_flags, render_flags
from pipelines.monitoring.slo import load_slos
from pipelines.monitoring.status import plot_metrics, read_metrics, render_status, stream_statuses
from pipelines.runner import resolve_jobs, run_jobs
from pipelines.wiring import JOBS, STREAM


def add_common(p: argparse.ArgumentParser) -> None:
    """--lake-root, --bootstrap-servers, --topic: the flags every command takes."""
    p.add_argument("--lake-root", help="lake root folder (default $LAKEHOUSE_ROOT or ./lakehouse)")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")
    p.add_argument("--topic", dest="events_topic", help="events topic (default billing.events)")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the common flags over them."""
    return Settings().with_overrides(
        lake_root=getattr(args, "lake_root", None),
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        events_topic=getattr(args, "events_topic", None),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    resolve_jobs(args.jobs)
    settings = settings_from(args)
    run = RunOptions(continuous=args.continuous, processing_time=args.processing_time,
                     max_offsets_per_trigger=args.max_offsets_per_trigger,
                     max_files_per_trigger=args.max_files_per_trigger,
                     period=parse_period(args.period), catalog=args.catalog, exports_dir=args.exports_dir,
                     plan_rules=args.plan_rules, dry_run=args.dry_run)
    ctx = JobContext.from_settings(settings, run, dedup_rules_path=args.dedup_rules,
                                   pipeline_config_path=args.pipeline_config)
    spark = build_spark("lakehouse-run")
    run_jobs(spark, ctx, args.jobs)
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    spark = build_spark("lakehouse-sql")
    run_sql(spark, settings, args.query, limit=args.limit, fmt=args.format, out=sys.stdout)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    spark = build_spark("lakehouse-status")
    metrics = read_metrics(spark, Lake(settings_from(args)))
    statuses = stream_statuses(metrics, load_slos(args.slo))
    print(render_status(statuses))
    if args.plot:
        print(f"plot: {plot_metrics(metrics, args.plot)}")
    return 0 if all(s.ok for s in statuses) else 1


def _cmd_fraud(args: argparse.Namespace) -> int:
    spark = build_spark("lakehouse-fraud")
    lake = Lake(settings_from(args))
    if args.action == "clear":
        cleared = clear_flags(spark, lake, args.account, rule=args.rule, by=args.by, reason=args.reason)
        print(f"fraud: cleared {cleared} open flag(s) of account {args.account}"
              + (f" (rule {args.rule})" if args.rule else ""))
    else:
        print(render_flags(spark, lake, include_cleared=args.all))
    return 0


def _jobs_help() -> str:
    """The jobs of the wiring table (pipelines/wiring.py): streams, then batch jobs."""
    def listed(stream: bool) -> str:
        return ", ".join(f"{j.name} ({j.help})" for j in JOBS.values() if (j.kind == STREAM) == stream)
    return f"streams: {listed(True)}; batch: {listed(False)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lakehouse", description="Usage-billing lakehouse")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run jobs in order (default: process everything available, then stop)")
    run.add_argument("jobs", nargs="+", metavar="JOB", help=_jobs_help())
    run.add_argument("--continuous", action="store_true", help="keep streaming jobs running")
    run.add_argument("--processing-time", default="2 seconds", help="micro-batch interval in --continuous mode")
    run.add_argument("--max-offsets-per-trigger", type=int, help="cap Kafka records per bronze micro-batch")
    run.add_argument("--max-files-per-trigger", type=int, help="cap Delta files per silver/gold micro-batch")
    run.add_argument("--dedup-rules", help="dedup rules YAML (default: pipelines/conf/dedup_rules.yaml)")
    run.add_argument("--pipeline-config", help="pipeline YAML (default: pipelines/conf/pipeline.yaml)")
    run.add_argument("--period", help="billing/export: one billing period YYYY-MM (default: every period)")
    run.add_argument("--catalog", type=Path, help="billing: pricing catalog YAML (default: pipelines/conf/pricing.yaml)")
    run.add_argument("--exports-dir", type=Path, help="export: folder for the export files (default: <lake root>/exports)")
    run.add_argument("--plan-rules", type=Path,
                     help="plan-rules, notify: plan rules YAML (default: pipelines/conf/plan_rules.yaml)")
    run.add_argument("--dry-run", action="store_true",
                     help="plan-rules: record decisions as proposed, send no plan.changed event or notification")
    add_common(run)
    run.set_defaults(func=_cmd_run)

    sql = sub.add_parser("sql", help="query the tables by logical name, e.g. SELECT * FROM gold.daily_usage")
    sql.add_argument("query")
    sql.add_argument("--limit", type=int, default=50, help="rows to print (table format)")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    add_common(sql)
    sql.set_defaults(func=_cmd_sql)

    status = sub.add_parser("status", help="each stream against its SLOs, from ops.stream_metrics "
                                           "(exit 1 on a breach)")
    status.add_argument("--plot", type=Path, metavar="PATH", help="also write a PNG of throughput, lag and freshness")
    status.add_argument("--slo", type=Path, help="SLO YAML (default: pipelines/conf/slo.yaml)")
    add_common(status)
    status.set_defaults(func=_cmd_status)

    fraud = sub.add_parser("fraud", help="fraud flags (gold.fraud_flags): list them, clear one")
    fraud_sub = fraud.add_subparsers(dest="action", required=True)
    fraud_list = fraud_sub.add_parser("list", help="open flags (--all: cleared ones too)")
    fraud_list.add_argument("--all", action="store_true")
    add_common(fraud_list)
    fraud_clear = fraud_sub.add_parser("clear", help="clear an account's open flag(s): its export lines are released")
    fraud_clear.add_argument("account")
    fraud_clear.add_argument("--rule", help="only this rule's flags (default: every open flag of the account)")
    fraud_clear.add_argument("--by", required=True, help="who clears it")
    fraud_clear.add_argument("--reason", required=True, help="why it is cleared")
    add_common(fraud_clear)
    fraud.set_defaults(func=_cmd_fraud)
    return parser


# Failures that carry a one-line, actionable message: printed as `<prog>: <message>` with
# exit status 2 (the traceback with -v). By class name, so no module is imported to list them.
KNOWN_ERRORS = frozenset({
    "ConfigError", "ContractError", "UnknownJobError", "SparkSetupError", "TableSpecError",
    "ReadOnlyQueryError", "BillingError", "CatalogError", "ExportRefused", "ExportIntegrityError",
    "QualityGateFailed", "FraudError", "KafkaAuthError", "PiiConfigError", "BackfillError",
    "ViewConfigError", "AuditError", "NotificationError", "PublishError", "TopicAdminError",
})


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None,
                known_errors: frozenset[str] = KNOWN_ERRORS) -> int:
    """Parse, set up logging, call the command's `func`; a known failure becomes one line."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one readable line for known failures; traceback with -v
        if type(exc).__name__ in known_errors and not args.verbose:
            print(f"{parser.prog}: {exc}", file=sys.stderr)
            return 2
        raise


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)

if __name__ == "__main__":
    sys.exit(main())
