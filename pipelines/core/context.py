"""What every streaming job shares: triggers and the run context."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipelines.core.config import DedupRule, SilverConfig, load_dedup_rules, load_pipeline_config
from pipelines.core.settings import Settings
from pipelines.core.tables import Lake


@dataclass(frozen=True)
class RunOptions:
    continuous: bool = False
    # Continuous mode: how often a micro-batch starts when data keeps coming.
    processing_time: str = "2 seconds"
    # Caps per micro-batch (None = everything available in one batch).
    max_offsets_per_trigger: int | None = None
    max_files_per_trigger: int | None = None
    # Batch jobs (billing, export): one period (YYYY-MM) or all; catalog and export folder
    # overrides (None = the shipped catalog, <lake root>/exports).
    period: str | None = None
    catalog: Path | None = None
    exports_dir: Path | None = None
    # plan-rules and the notify stream: the rules file (None = pipelines/conf/plan_rules.yaml);
    # plan-rules only: record decisions as proposed and send nothing.
    plan_rules: Path | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class JobContext:
    settings: Settings
    lake: Lake
    silver: SilverConfig
    rules: tuple[DedupRule, ...]
    run: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def from_settings(cls, settings: Settings, run: RunOptions | None = None, *,
                      dedup_rules_path=None, pipeline_config_path=None) -> "JobContext":
        return cls(settings=settings, lake=Lake(settings), silver=load_pipeline_config(pipeline_config_path),
                   rules=load_dedup_rules(dedup_rules_path), run=run or RunOptions())


def apply_trigger(writer, run: RunOptions):
    if run.continuous:
        return writer.trigger(processingTime=run.processing_time)
    return writer.trigger(availableNow=True)
