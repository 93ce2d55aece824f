"""Usage-billing lakehouse: Kafka -> Delta bronze/silver/gold, billed exactly once.

Production only: this package is the wheel the Databricks jobs run. The development tools
(local broker, event generator and producer, hostile corpus, demo, docs generator) are the
top-level `devtools` package, outside the wheel; nothing here imports them
(tests/unit/test_package_boundary.py).
"""

__version__ = "0.1.0"
