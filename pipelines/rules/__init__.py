"""Plan rules (auto-upgrade, auto-downgrade), usage alerts and reactive flows: the rules
file loader (config.py) and pure DataFrame -> DataFrame transforms (plan.py, alerts.py)."""
