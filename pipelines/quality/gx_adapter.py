"""The one module that talks to great-expectations (1.x): everything else speaks in plain
names (`expect_column_values_to_not_be_null`), keyword arguments and `Outcome`s.

Keeping GX behind this seam means a GX upgrade, or swapping it out, touches one file, and
the suites in quality/ stay plain data.

great_expectations is imported inside the functions that use it, on purpose: importing
it takes seconds, and every job imports this module through the wiring table, while only
the quality job, the export gate and loading the suites ever evaluate an expectation.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

from pyspark.sql import DataFrame

# Values of a failing column check kept for the report; GX's own default is 20.
SAMPLE_SIZE = 5

_lock = threading.Lock()


@dataclass(frozen=True)
class Expectation:
    """One expectation to evaluate: its caller's name for it, the GX type, its arguments."""

    name: str
    expect: str
    kwargs: dict


@dataclass(frozen=True)
class Outcome:
    name: str
    success: bool
    observed: str | None = None        # observed value for table-level expectations
    unexpected_count: int | None = None
    element_count: int | None = None
    sample: tuple = ()                 # a few unexpected values
    error: str | None = None           # the expectation could not be evaluated


def _class_name(expect: str) -> str:
    if expect == "unexpected_rows_expectation":
        return "UnexpectedRowsExpectation"
    return "".join(part.capitalize() for part in expect.split("_"))


def build(expect: str, kwargs: dict):
    """The GX expectation object; ValueError (with GX's own reason) when the type is
    unknown or the arguments do not fit it. Used to validate suites on load."""
    import great_expectations as gx

    cls = getattr(gx.expectations, _class_name(expect), None)
    if cls is None or not isinstance(cls, type):
        raise ValueError(f"unknown expectation type {expect!r} (see great_expectations.expectations)")
    try:
        return cls(**kwargs)
    except Exception as exc:  # pydantic's validation error, flattened to one line
        reason = " ".join(str(exc).split())
        raise ValueError(f"{expect}: invalid arguments {kwargs!r}: {reason}") from None


@lru_cache(maxsize=1)
def _batch_definition():
    """One ephemeral (in-memory, no files) context with a Spark dataframe asset; each
    validation hands its DataFrame in as a batch parameter."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_spark("lakehouse").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def _sample(values) -> tuple:
    return tuple(json.loads(json.dumps(v, default=str)) for v in (values or [])[:SAMPLE_SIZE])


def _error(info) -> str | None:
    """GX reports a failed metric either flat or per metric id; the first message wins."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "expectation raised")
    for nested in info.values():
        if isinstance(nested, dict) and nested.get("raised_exception"):
            return str(nested.get("exception_message") or "expectation raised")
    return None


def validate(df: DataFrame, expectations: list[Expectation]) -> list[Outcome]:
    """Evaluate `expectations` over `df` in one GX validation; one Outcome each, in order."""
    import great_expectations as gx

    if not expectations:
        return []
    with _lock:  # GX's context and suite objects are not thread-safe
        batch = _batch_definition().get_batch(batch_parameters={"dataframe": df})
        suite = gx.ExpectationSuite(name="lakehouse")
        for i, e in enumerate(expectations):
            expectation = build(e.expect, e.kwargs)
            expectation.meta = {**(expectation.meta or {}), "lakehouse_index": i}
            suite.add_expectation(expectation)
        results = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                       "partial_unexpected_count": SAMPLE_SIZE})
    # GX does not keep the suite's order: each result is matched back by the index in its meta.
    by_index = {int(r.expectation_config.meta["lakehouse_index"]): r for r in results.results}
    outcomes = []
    for i, e in enumerate(expectations):
        r = by_index[i]
        error = _error(r.exception_info)
        res = dict(r.result or {})
        observed = res.get("observed_value")
        outcomes.append(Outcome(
            name=e.name,
            success=bool(r.success) and error is None,
            observed=None if observed is None else json.dumps(observed, default=str),
            unexpected_count=res.get("unexpected_count"),
            element_count=res.get("element_count"),
            sample=_sample(res.get("partial_unexpected_list")),
            error=error,
        ))
    return outcomes
