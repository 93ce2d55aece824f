"""Fraud monitors over silver: rules (pipelines/fraud/rules.py, config in
pipelines/conf/fraud_rules.yaml) -> gold.fraud_flags (pipelines/fraud/flags.py)."""
