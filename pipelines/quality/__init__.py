"""Data quality: suites as data in quality/, evaluated with great-expectations behind
pipelines.quality.gx_adapter, results in ops.quality_results, gates for the export."""
