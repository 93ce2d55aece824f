"""Plan rules (auto-upgrade, auto-downgrade), usage alerts and notifications: the rules
file loader (config.py), pure DataFrame -> DataFrame transforms (plan.py, alerts.py), the
notifications outbox and its publisher (notifications.py), and the two jobs: the notify
stream (notify.py) and the plan-rules batch (plan_rules.py)."""
