"""Data quality: suites as data in pipelines/conf/quality/, evaluated with great-expectations behind
pipelines.quality.gx_adapter, results in ops.quality_results, gates for the export."""
