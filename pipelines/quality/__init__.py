"""Data quality: suites as data in pipelines/conf/quality/ (suites.py), the checks on
billing's output (checks.py) and the derived datasets (datasets.py) they evaluate, with
great-expectations behind gx_adapter.py; the quality job and the gate's refusals (run.py),
results in ops.quality_results."""
