"""Runs quality checks over the lake: `lakehouse run quality` (every suite, results to
ops.quality_results, a report, QualityGateFailed on a critical failure) and the gates
(the export gate runs the checks gated on `export` over the periods it exports)."""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.core.tables import QUALITY_RESULTS, Lake, spec
from pipelines.quality import gx_adapter
from pipelines.quality.datasets import DATASETS
from pipelines.quality.suites import Check, load_suites

MAX_SHOWN = 5


class QualityGateFailed(RuntimeError):
    """A critical quality check failed (the report names which)."""


@dataclass
class Inputs:
    """Where checks read their tables: `tables` overrides (the gate's period cuts), else
    the lake; a table that does not exist yet reads as empty (nothing to check)."""

    spark: SparkSession
    lake: Lake
    tables: dict[str, DataFrame] = field(default_factory=dict)
    periods: DataFrame | None = None
    now: datetime | None = None

    @classmethod
    def of(cls, spark: SparkSession, lake: Lake, *, tables: dict[str, DataFrame] | None = None,
           periods: DataFrame | None = None, now: datetime | None = None) -> "Inputs":
        return cls(spark, lake, dict(tables or {}), periods, now)

    def table(self, name: str) -> DataFrame:
        if name not in self.tables:
            self.tables[name] = (self.lake.read(self.spark, name) if self.lake.exists(self.spark, name)
                                 else self.spark.createDataFrame([], spec(name).struct_type()))
        return self.tables[name]

    def frame(self, check: Check) -> DataFrame:
        return self.table(check.table) if check.table else DATASETS[check.dataset](self)


@dataclass(frozen=True)
class Result:
    check: Check
    outcome: gx_adapter.Outcome
    # What failed, as text: a dataset's first `detail`s per `check` (or the check name), or
    # the GX sample of unexpected values.
    shown: dict[str, list[str]] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return self.outcome.success

    def summary(self) -> str:
        o = self.outcome
        if o.error:
            return f"error: {o.error}"
        if o.unexpected_count is not None:
            return f"{o.unexpected_count} of {o.element_count} row(s) unexpected"
        return f"observed {o.observed}"


def _details(frame: DataFrame, check: Check, max_shown: int) -> dict[str, list[str]]:
    # Bounded driver read: one row per failed check name with its count and first details.
    key = F.col("check") if "check" in frame.columns else F.lit(check.name)
    found = (frame.groupBy(key.alias("k"))
             .agg(F.count(F.lit(1)).alias("n"), F.slice(F.array_sort(F.collect_list("detail")), 1, max_shown).alias("s"))
             .collect())
    return {r["k"]: list(r["s"]) + ([f"... and {r['n'] - len(r['s'])} more"] if r["n"] > len(r["s"]) else [])
            for r in sorted(found, key=lambda r: r["k"])}


def run_checks(inputs: Inputs, checks: tuple[Check, ...] | list[Check], *, max_shown: int = MAX_SHOWN) -> list[Result]:
    """Each target (table or dataset) is validated once with all of its checks."""
    by_target: dict[str, list[Check]] = defaultdict(list)
    for c in checks:
        by_target[c.target].append(c)
    results: list[Result] = []
    for target, group in by_target.items():
        frame = inputs.frame(group[0])
        if group[0].dataset:
            # Datasets are problem rows (small when healthy): computed once, then read by
            # GX and, if it fails, for the details.
            frame = frame.localCheckpoint()
        outcomes = gx_adapter.validate(frame, [gx_adapter.Expectation(c.name, c.expect, c.kwargs) for c in group])
        for check, outcome in zip(group, outcomes):
            shown: dict[str, list[str]] = {}
            if not outcome.success:
                if "detail" in frame.columns and not outcome.error:
                    shown = _details(frame, check, max_shown)
                else:
                    shown = {check.name: [f"{check.description}: " + Result(check, outcome).summary()
                                          + (f", e.g. {list(outcome.sample)}" if outcome.sample else "")]}
            results.append(Result(check, outcome, shown))
    order = {c.name: i for i, c in enumerate(checks)}
    return sorted(results, key=lambda r: order[r.check.name])


def gate_refusals(inputs: Inputs, *, gate: str, max_shown: int = MAX_SHOWN,
                  checks: tuple[Check, ...] | None = None) -> dict[str, list[str]]:
    """Failures of the critical checks gated on `gate`, by check name (empty = pass)."""
    gated = [c for c in (checks or load_suites()) if gate in c.gates and c.critical]
    failures: dict[str, list[str]] = {}
    for r in run_checks(inputs, gated, max_shown=max_shown):
        if not r.success:
            failures.update(r.shown)
    return dict(sorted(failures.items()))


@dataclass(frozen=True)
class QualityReport:
    run_id: str
    checked_at: datetime
    results: tuple[Result, ...]

    @property
    def critical_failures(self) -> list[Result]:
        return [r for r in self.results if not r.success and r.check.critical]

    def render(self) -> str:
        failed = [r for r in self.results if not r.success]
        warnings = len(failed) - len(self.critical_failures)
        head = (f"quality {self.run_id}: {len(self.results)} check(s), {len(self.results) - len(failed)} passed, "
                f"{len(self.critical_failures)} critical failure(s), {warnings} warning(s)")
        rows = [("RESULT", "SUITE", "CHECK", "TARGET", "SEVERITY", "OBSERVED")]
        for r in self.results:
            verdict = "PASS" if r.success else ("FAIL" if r.check.critical else "WARN")
            rows.append((verdict, r.check.suite, r.check.name, r.check.target, r.check.severity, r.summary()))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
        for r in failed:
            lines.append(f"  {r.check.name}: {r.check.description}")
            lines += [f"      {name}: {item}" if name != r.check.name else f"      {item}"
                      for name, items in r.shown.items() for item in items]
        return "\n".join(lines)


def _result_rows(spark: SparkSession, report: QualityReport) -> DataFrame:
    rows = [(report.run_id, r.check.suite, r.check.name, r.check.target, r.check.severity, r.success,
             r.outcome.observed, r.outcome.unexpected_count, r.outcome.element_count,
             json.dumps({k: v for k, v in r.shown.items()}, ensure_ascii=False) if r.shown else None,
             r.outcome.error, r.check.description, report.checked_at)
            for r in report.results]
    return spark.createDataFrame(rows, spec(QUALITY_RESULTS).struct_type())


def run_quality(spark: SparkSession, lake: Lake, *, checks: tuple[Check, ...] | None = None,
                suites: list[str] | None = None, now: datetime | None = None) -> QualityReport:
    """Run the suites (all, or those named), append each result to ops.quality_results."""
    checks = checks or load_suites()
    if suites:
        checks = tuple(c for c in checks if c.suite in suites)
    now = now or datetime.now(UTC)
    results = run_checks(Inputs.of(spark, lake, now=now), checks)
    report = QualityReport(f"q-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}", now, tuple(results))
    lake.ensure(spark, QUALITY_RESULTS)
    lake.save(_result_rows(spark, report).write.format("delta").mode("append"), QUALITY_RESULTS)
    return report


def run_quality_job(spark: SparkSession, lake: Lake, say, **kwargs) -> QualityReport:
    """The `quality` batch job: the report, then QualityGateFailed on a critical failure."""
    report = run_quality(spark, lake, **kwargs)
    say(report.render())
    if report.critical_failures:
        names = ", ".join(r.check.name for r in report.critical_failures)
        raise QualityGateFailed(f"quality: {len(report.critical_failures)} critical check(s) failed: {names} "
                                f"(details above and in {QUALITY_RESULTS}, run_id {report.run_id})")
    return report
