"""Development tools: everything a developer runs on a laptop or in CI that production never does.

Named `devtools` because that is what it holds, and so a newcomer sees at the top of the
tree which code ships and which does not: `pipelines/` is the wheel (pyproject.toml
`[tool.hatch.build.targets.wheel] packages = ["pipelines"]`), the code a Databricks job
runs; this package is not in the wheel and production never imports it
(tests/unit/test_package_boundary.py fails if a module of `pipelines` does). It may
import `pipelines`, never the other way round.

    kafka_local     the local single-node Kafka broker (KRaft): start, stop, status
    generator       the seeded synthetic event stream (duplicates, retries, late, bad records)
    record_files    hand-written record files (`produce --from-file`) and `--dry-run` lines
    sender          sends records to Kafka, at a rate if asked
    produce         the `produce` command: generator or record file, to Kafka or stdout
    hostile         a seeded corpus of records that break the contract (fuzz tests, bench)
    demo, summary   `make demo`: broker, events, jobs, and a readable account of the lake
    docs            renders docs/contracts.md's contract and docs/tables.md (`make docs`)
    cli             `python -m devtools kafka start|stop|status | produce | demo`

Run it from a checkout, where the editable install (`make setup`) or the working
directory puts it on the path: `.venv/bin/python -m devtools --help`.
"""
