"""Kafka -> bronze -> silver -> gold: the bronze stream (bronze.py), the parse (parse.py),
PII hashing (pii_key.py, pii.py), dedup (dedup.py), silver's batch plan and writer
(silver_plan.py, silver.py), the daily rollup and its stream (gold.py), and the backfill
and PII rehash that replay bronze (backfill.py, rehash.py)."""
